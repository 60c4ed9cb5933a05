"""What a trainer reads from an objective's options: the typed interface behind every registered objective.

An online objective's options class derives from :class:`OnlineOptions` and declares, by overriding its methods,
what it needs besides the sampled batch: a frozen reference, a KL penalty folded into the reward before the
advantages, knobs of rollout collection (:class:`RolloutPlan`), and its default advantage estimator (the name of
one in :mod:`divalign.advantages`; the estimator itself declares whether it needs a value head or fine-grained
scores). An unpaired objective's options derive from :class:`UnpairedOptions`. Trainers read these and nothing
else, so adding an objective means writing its own file.

Invalid option values raise ``ValueError`` naming the option; the configuration layer reports them as the user's
mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class RolloutPlan:
    """What an online objective asks of rollout collection; everything is off by default.

    See docs/algorithms.md#dapo (dynamic sampling, truncation mask, overlong shaping) and docs/algorithms.md#dagrpo
    (anchors).
    """

    dynamic_sampling: bool = False  #: drop groups whose rewards are all equal and sample more prompts
    max_sampling_rounds: int = 1  #: sampling rounds per step when dynamic sampling is on
    mask_truncated: bool = False  #: leave completions that hit the token budget out of the loss
    overlong_buffer: int = 0  #: soft overlong punishment over the last this many tokens (-1: a fifth; 0: off)
    overlong_factor: float = 1.0  #: penalty at the budget
    anchors: bool = False  #: add the reference solution to groups where no sample succeeds


@dataclass(frozen=True)
class KLPenalty:
    """A KL penalty folded into the reward before the advantages are computed (PPO per token, RLOO per sequence):
    the per-token estimate of log π_old − log π_ref (``k1``) or k3, times ``coef``."""

    coef: float
    estimator: str = "k1"


class OnlineOptions:
    """Base class of the options of every online objective (its loss takes an :class:`OnlineBatch`)."""

    #: The advantage estimator the trainer uses unless told otherwise (a name in :mod:`divalign.advantages`).
    advantage: ClassVar[str] = "group"
    #: Whether the loss works with that estimator only (it reads what no other estimator gives, as PPO's GAE).
    own_estimator_only: ClassVar[bool] = False

    def needs_reference(self) -> bool:
        """Whether the loss or the reward shaping reads the frozen reference's log-probabilities."""
        return False

    def kl_penalty(self) -> KLPenalty | None:
        """The KL penalty folded into the reward before the advantages, or None."""
        return None

    def rollout_plan(self) -> RolloutPlan:
        """What rollout collection must do for this objective beyond sampling and scoring."""
        return RolloutPlan()


class UnpairedOptions:
    """Base class of the options of every objective on unpaired desirable / undesirable responses."""

    #: Whether the loss needs the log-probabilities of mismatched (prompt, other response) pairs (KTO's z₀).
    mismatched_pairs: ClassVar[bool] = False

    @property
    def whole_batch_only(self) -> bool:
        """Whether the loss needs the whole batch in one forward pass (it is not a sum over micro-batches)."""
        return False

    def next_state(self, state: dict, metrics: dict) -> dict:
        """The running state after a whole batch (e.g. moving averages), from the summed metrics."""
        return state
