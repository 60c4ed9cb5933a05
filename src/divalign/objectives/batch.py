"""The tensors an online (policy-gradient style) objective sees for one micro-batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.groups import dense_group_ids


@dataclass
class OnlineBatch:
    """One micro-batch of responses. Micro-batches always hold whole groups.

    Per-token tensors are (B, T) over completion positions; ``mask`` is 1.0 on real completion tokens.
    The ``num_*`` fields count the *whole* accumulated batch so that losses summed over micro-batches equal
    the loss of the whole batch (research/algorithms.md §6.2 item 8).
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
    token_advantages: Tensor | None = None  #: (B, T) per-token advantages (PPO's GAE); else ``advantages``
    values: Tensor | None = None  #: (B, T) value-head predictions, with gradient (PPO)
    old_values: Tensor | None = None  #: (B, T) value predictions at sampling time (PPO)
    returns: Tensor | None = None  #: (B, T) GAE returns, the value targets (PPO)

    def __post_init__(self):
        self.group_ids, self.local_groups = dense_group_ids(self.group_ids)

    @property
    def lengths(self) -> Tensor:
        return self.mask.sum(-1)

    def sequence_sum(self, per_token: Tensor) -> Tensor:
        return (per_token * self.mask).sum(-1)


def make_batch(**kwargs) -> OnlineBatch:
    """Build a batch, defaulting the global counts to this micro-batch's own (handy in tests)."""
    mask = kwargs["mask"]
    ids = kwargs["group_ids"]
    kwargs.setdefault("num_sequences", mask.shape[0])
    kwargs.setdefault("num_groups", int(torch.unique(ids).numel()))
    kwargs.setdefault("num_tokens", int(mask.sum().item()))
    kwargs.setdefault("max_length", mask.shape[1])
    kwargs.setdefault("ref_logprobs", None)
    return OnlineBatch(**kwargs)


def rows_of(batch: OnlineBatch, rows, logprobs: Tensor, values: Tensor | None = None) -> OnlineBatch:
    """The micro-batch ``rows`` of a whole-batch bundle, with the policy's fresh ``logprobs`` (and values)."""
    def pick(t):
        return None if t is None else t[rows]

    return OnlineBatch(logprobs=logprobs, old_logprobs=batch.old_logprobs[rows], ref_logprobs=pick(batch.ref_logprobs),
                       mask=batch.mask[rows], advantages=batch.advantages[rows], rewards=batch.rewards[rows],
                       group_ids=batch.group_ids[rows], num_sequences=batch.num_sequences,
                       num_groups=batch.num_groups, num_tokens=batch.num_tokens, max_length=batch.max_length,
                       token_advantages=pick(batch.token_advantages), values=values,
                       old_values=pick(batch.old_values), returns=pick(batch.returns))
