"""Which tokens a training forward runs, and where attention finds them.

A batch of prompts (left-padded, ``P`` columns) followed by completions (right-padded, ``C`` columns) holds
padding, and with groups of G completions per prompt (GRPO, and a DPO pair) the same prompt G times. A
:class:`TokenLayout` lists each token that has to run exactly once: every real token, and with groups each
prompt's tokens once for its group. Everything that works token by token (norms, products, MLP) runs on that
list. Attention alone needs rows of keys, so it reads them through an index map into a padded layout, one
attention row per sequence with the sequence's columns as slots. With groups, the slots of a prompt column
read the group's single copy of that prompt token in every row of the group, and the first row of the group
produces the prompt tokens' outputs; in the other rows those slots are keys only. Attention thus costs what it
costs unshared, and everything else runs on each prompt once.

Rows shorter than :data:`MIN_SLOTS` get empty slots appended: torch's CPU softmax and its backward run several
times slower over rows shorter than 16. Empty slots read token 0 and are masked out as keys; their outputs are
never read, so their gradients are exactly zero. Positions continue as in the unshared sequences (left padding
skipped), so values and gradients are those of running every sequence whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from divalign.models.positions import causal_mask, position_ids

#: the fewest slots per attention row: torch's CPU softmax and its backward are several times slower over shorter
#: rows (BENCHMARKS.md, "Figures behind choices in the code")
MIN_SLOTS = 16


@dataclass
class TokenLayout:
    token_ids: Tensor  #: (R,) the tokens that run, prompts (once per group) first
    positions: Tensor  #: (R,) their RoPE positions
    key_map: Tensor  #: (rows·L,) the token each attention slot reads (0 for an empty slot)
    output_slot: Tensor  #: (R,) the slot whose attention output is each token's
    allowed: Tensor  #: (rows, L, L) which slots each slot attends to (causal, real keys; a slot always sees itself)
    predicting: Tensor  #: (B, C) the token whose output predicts each completion token (0 where it is padding)
    rows: int  #: attention rows (one per sequence)
    length: int  #: slots per row (L = P + C, at least MIN_SLOTS)
    attention_index: object = None  #: the index tables a model derives from this layout, kept for its backward
    distinct_tokens: object = None  #: which tokens are the same token, likewise derived and kept


def token_layout(input_ids: Tensor, attention_mask: Tensor, prompt_length: int, group_size: int = 1) -> TokenLayout:
    """The layout of a batch of ``prompt_length`` prompt columns and completions; with ``group_size`` G > 1 the
    rows come in groups of G sharing one prompt, which runs once."""
    p, c = prompt_length, input_ids.shape[1] - prompt_length
    if input_ids.shape[1] < MIN_SLOTS:  # empty completion columns, which run nothing
        extra = MIN_SLOTS - input_ids.shape[1]
        input_ids, attention_mask = F.pad(input_ids, (0, extra)), F.pad(attention_mask, (0, extra))
    n, length = input_ids.shape
    mask = attention_mask.bool()
    device = input_ids.device
    if group_size == 1:
        index = _running_index(mask)
        positions = position_ids(mask)[mask]
        output_slot = torch.arange(n * length, device=device)[mask.reshape(-1)]
        return TokenLayout(input_ids[mask], positions, index.reshape(-1), output_slot, causal_mask(mask),
                           index[:, p - 1 : p + c - 1], n, length)
    prompt_mask, completion_mask = mask[::group_size, :p], mask[:, p:]
    prompt_index = _running_index(prompt_mask)
    real_prompt = int(prompt_mask.sum())
    completion_index = torch.where(completion_mask, _running_index(completion_mask) + real_prompt, 0)
    prompt_positions = position_ids(prompt_mask)
    starts = prompt_mask.sum(-1).repeat_interleave(group_size)
    completion_positions = starts[:, None] + torch.arange(length - p, device=device)
    token_ids = torch.cat([input_ids[::group_size, :p][prompt_mask], input_ids[:, p:][completion_mask]])
    positions = torch.cat([prompt_positions[prompt_mask], completion_positions[completion_mask]])
    key_map = torch.cat([prompt_index.repeat_interleave(group_size, 0), completion_index], dim=1)
    grid = torch.arange(n * length, device=device).view(n, length)
    output_slot = torch.cat([grid[::group_size, :p][prompt_mask], grid[:, p:][completion_mask]])
    predicting = key_map[:, p - 1 : p + c - 1]
    return TokenLayout(token_ids, positions, key_map.reshape(-1), output_slot, causal_mask(mask), predicting, n, length)


def _running_index(mask: Tensor) -> Tensor:
    """Index of each True entry among the True entries in row-major order; 0 where False."""
    index = mask.reshape(-1).long().cumsum(0).view_as(mask) - 1
    return torch.where(mask, index, 0)
