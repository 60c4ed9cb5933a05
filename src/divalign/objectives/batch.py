"""The tensors each family of objectives sees for one micro-batch.

The ``num_*`` counts are those of the *whole* accumulated batch, so that losses summed over micro-batches equal
the loss of the whole batch whatever the split (docs/algorithms.md#normalisation), and metrics are each
micro-batch's additive share of the whole-batch value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.groups import dense_group_ids


@dataclass
class OnlineBatch:
    """One micro-batch of sampled responses (online objectives). Micro-batches always hold whole groups.

    Per-token tensors are (B, T) over completion positions; ``mask`` is 1.0 on real completion tokens.
    """

    logprobs: Tensor  #: current policy, carries the gradient
    old_logprobs: Tensor  #: behaviour policy that sampled the responses
    ref_logprobs: Tensor | None  #: frozen reference policy (None when no reference is loaded)
    mask: Tensor
    advantages: Tensor  #: (B,)
    rewards: Tensor  #: (B,)
    group_ids: Tensor  #: (B,) prompt index of each response
    num_sequences: int
    num_groups: int
    num_tokens: int
    max_length: int  #: completion-token budget (the Dr. GRPO constant)
    num_nonempty: int | None = None  #: responses with at least one real token (None: num_sequences)
    token_advantages: Tensor | None = None  #: (B, T) per-token advantages (PPO's GAE); else ``advantages``
    values: Tensor | None = None  #: (B, T) value-head predictions, with gradient (PPO)
    old_values: Tensor | None = None  #: (B, T) value predictions at sampling time (PPO)
    returns: Tensor | None = None  #: (B, T) GAE returns, the value targets (PPO)
    is_weights: Tensor | None = None  #: (B, T) truncated importance weights π_train/π_sampler (TIS), no gradient

    def __post_init__(self):
        self.group_ids, self.local_groups = dense_group_ids(self.group_ids)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)

    def sequence_sum(self, per_token: Tensor) -> Tensor:
        return (per_token * self.mask).sum(-1)

    def rows(self, rows: Tensor, logprobs: Tensor, ref_logprobs: Tensor | None = None, values: Tensor | None = None,
             **counts: int) -> OnlineBatch:
        """The micro-batch ``rows`` of this whole-batch bundle with the policy's fresh ``logprobs`` (and the
        reference's and the value head's when they come from the same pass); ``counts`` replace the ``num_*``
        counts (those of a minibatch)."""

        def pick(t):
            return None if t is None else t[rows]

        return dataclasses.replace(
            self, logprobs=logprobs, old_logprobs=self.old_logprobs[rows],
            ref_logprobs=pick(self.ref_logprobs) if ref_logprobs is None else ref_logprobs,
            mask=self.mask[rows], advantages=self.advantages[rows], rewards=self.rewards[rows],
            group_ids=self.group_ids[rows], token_advantages=pick(self.token_advantages), values=values,
            old_values=pick(self.old_values), returns=pick(self.returns), is_weights=pick(self.is_weights), **counts)


def make_batch(**kwargs) -> OnlineBatch:
    """Build an online batch, defaulting the whole-batch counts to this micro-batch's own."""
    mask = kwargs["mask"]
    ids = kwargs["group_ids"]
    kwargs.setdefault("num_sequences", mask.shape[0])
    kwargs.setdefault("num_groups", int(torch.unique(ids).numel()))
    kwargs.setdefault("num_tokens", int(mask.sum().item()))
    kwargs.setdefault("max_length", mask.shape[1])
    kwargs.setdefault("num_nonempty", int((mask.sum(-1) > 0).sum().item()))
    kwargs.setdefault("ref_logprobs", None)
    return OnlineBatch(**kwargs)


@dataclass
class PairBatch:
    """(chosen, rejected) pairs as sequence log-probabilities (token sums over the completion)."""

    chosen_logps: Tensor  #: (B,) log π_θ(y_w | x)
    rejected_logps: Tensor
    ref_chosen_logps: Tensor
    ref_rejected_logps: Tensor
    chosen_lengths: Tensor  #: (B,) completion token counts
    rejected_lengths: Tensor
    num_pairs: int  #: pairs in the whole accumulated batch

    @property
    def chosen_ratio(self) -> Tensor:
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_ratio(self) -> Tensor:
        return self.rejected_logps - self.ref_rejected_logps

    def mean(self, per_pair: Tensor) -> Tensor:
        """This micro-batch's share of the whole batch's mean."""
        return per_pair.sum() / self.num_pairs

    def share(self, values: Tensor) -> float:
        """:meth:`mean` of a metric, as a float without gradient."""
        return float(values.detach().sum().item()) / self.num_pairs

    def metrics(self, beta: float, margin: Tensor) -> dict[str, float]:
        """Implicit rewards β·Δ, their ``margin`` and the accuracy (chosen rewarded above rejected)."""
        return {
            "reward_chosen": self.share(beta * self.chosen_ratio),
            "reward_rejected": self.share(beta * self.rejected_ratio),
            "reward_margin": self.share(margin),
            "reward_accuracy": self.share((margin > 0).float()),
        }


@dataclass
class UnpairedBatch:
    """Desirable and undesirable responses as sequence log-probabilities (token sums)."""

    logps: Tensor  #: (B,) log π_θ(y|x)
    ref_logps: Tensor  #: (B,)
    desirable: Tensor  #: (B,) bool
    num_desirable: int  #: in the whole accumulated batch
    num_undesirable: int
    kl_logps: Tensor | None = None  #: KTO: log π_θ(y'|x) on the whole batch's mismatched pairs
    ref_kl_logps: Tensor | None = None

    @property
    def log_ratio(self) -> Tensor:
        return self.logps - self.ref_logps

    @property
    def size(self) -> int:
        """Responses in the whole accumulated batch."""
        return self.num_desirable + self.num_undesirable

    def side_means(self, pos_terms: Tensor, neg_terms: Tensor) -> tuple[Tensor, Tensor]:
        """Σ over desirable / N⁺ and Σ over undesirable / N⁻ (0 when a side is empty in the whole batch)."""
        d = self.desirable
        zero = pos_terms.new_zeros(())
        pos = torch.where(d, pos_terms, zero).sum() / self.num_desirable if self.num_desirable else zero
        neg = torch.where(~d, neg_terms, zero).sum() / self.num_undesirable if self.num_undesirable else zero
        return pos, neg

    def reward_metrics(self, r: Tensor) -> dict[str, float]:
        """Mean implicit reward ``r`` of each side."""
        pos, neg = self.side_means(r.detach(), r.detach())
        return {"reward_desirable": float(pos), "reward_undesirable": float(neg)}
