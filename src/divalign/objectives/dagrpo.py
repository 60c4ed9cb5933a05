"""DaGRPO: distinctiveness-aware GRPO (Xie et al., arXiv 2512.06337), rebuilt from its abstract
(docs/algorithms.md#dagrpo).

Only the paper's abstract and summaries were available, so its two mechanisms are built here as documented,
pluggable parts with these choices:

1. **Masking low-distinctiveness pairs.** The group-relative advantage is a mean of pairwise reward differences,
   r_i − mean(r) = (1/G)·Σ_j (r_i − r_j). A pair (i, j) counts only when the responses are *distinct* under a
   fine-grained score s — |s_i − s_j| ≥ τ (``threshold``) — so near-identical responses no longer pull against
   each other (:func:`divalign.advantages.distinct_pairs`; the result is divided by the group's reward std like
   GRPO). The default score is cheap partial credit (``score="partial"``,
   :func:`divalign.verifiers.partial.partial_credit`: closeness of the final number to the answer, or string
   similarity when not numeric); any reward spec works instead, e.g. ``rm:FOLDER`` for a reward model — the
   paper used an LLM judge. With binary rewards a pair of equal reward contributes nothing either way; masking
   matters when two responses of different reward are nearly the same (e.g. 41 and 42 for the answer 42).
2. **Off-policy anchors.** For a prompt where no sample succeeds (every reward below 1) and whose reference
   solution is known (the dataset answer), the solution joins the group as one more response, scored by the same
   reward. Importance-weight rule: its behaviour log-probabilities are the current policy's own (computed once,
   without gradient, before the update), so ρ = 1 at the first update — the anchor contributes the plain policy
   gradient a·∇log π_θ(y*|x), clipped like any sample in later epochs, with no correction for the unknown
   policy that wrote it (as LUFFY-style off-policy guidance does).

The loss is GRPO's (:func:`divalign.objectives.grpo.grpo_loss`) with these advantages and groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from divalign.advantages.distinct import DistinctOptions
from divalign.objectives.grpo import GRPOOptions, grpo_loss
from divalign.objectives.interface import RolloutPlan
from divalign.objectives.registry import register


@dataclass
class DaGRPOOptions(GRPOOptions, DistinctOptions):
    """Options of ``dagrpo``: GRPO's options plus distinctiveness masking and anchors."""

    anchors: bool = True
    """Add the reference solution to groups where no sample succeeds."""

    advantage: ClassVar[str] = "distinct"

    def __post_init__(self):
        GRPOOptions.__post_init__(self)
        DistinctOptions.__post_init__(self)

    def rollout_plan(self) -> RolloutPlan:
        return RolloutPlan(anchors=self.anchors)


register("dagrpo", family="online", options=DaGRPOOptions)(grpo_loss)
