"""Token-list helpers: padding rows into a batch, fitting a prompt and response into a length budget, and the
batch of prompts followed by completions that forward passes take."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SequenceBatch:
    """Prompts (left-padded) followed by completions (right-padded), ready for one forward pass."""

    input_ids: Tensor  #: (B, P + T)
    attention_mask: Tensor  #: (B, P + T), 1 on real tokens
    prompt_length: int  #: P: completions start at this column

    @property
    def completion_mask(self) -> Tensor:
        return self.attention_mask[:, self.prompt_length :]

    def select(self, rows) -> SequenceBatch:
        return SequenceBatch(self.input_ids[rows], self.attention_mask[rows], self.prompt_length)

    def to(self, device) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device), self.prompt_length)


def pad(rows: list[list[int]], pad_id: int, left: bool = False, device="cpu") -> tuple[Tensor, Tensor]:
    """Stack token lists into an (N, width) tensor padded on the left or right, and its attention mask."""
    width = max(len(r) for r in rows)
    # Padded Python lists and one tensor each: per-row tensor writes cost more than the whole batch here.
    if left:
        ids = [[pad_id] * (width - len(r)) + list(r) for r in rows]
        mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    else:
        ids = [list(r) + [pad_id] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(mask, dtype=torch.long, device=device)


class Ragged:
    """Token lists stored as one flat tensor with offsets, padded batch by batch with a few tensor operations
    (the same result as :func:`pad` on the selected rows, without a Python pass over their tokens)."""

    def __init__(self, rows: list[list[int]]):
        self.lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        self.flat = torch.tensor([t for r in rows for t in r], dtype=torch.long)

    def padded(self, index: Tensor, pad_id: int, left: bool = False) -> tuple[Tensor, Tensor]:
        lengths = self.lengths[index]
        width = int(lengths.max())
        pos = torch.arange(width).expand(len(index), width)
        if left:
            pos = pos - (width - lengths)[:, None]
        valid = (pos >= 0) & (pos < lengths[:, None])
        ids = self.flat[(self.offsets[index][:, None] + pos).clamp(0, len(self.flat) - 1)]
        return torch.where(valid, ids, pad_id), valid.long()


def fit(prompt: list[int], response: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut the response from the right and the prompt from the left until both fit ``max_length`` tokens.

    The response keeps at least half the budget (or all of itself), the prompt keeps its *last* tokens — the
    part closest to the response.
    """
    if len(prompt) + len(response) <= max_length:
        return prompt, response
    response = response[: max(max_length - len(prompt), max_length // 2)]
    return prompt[len(prompt) - (max_length - len(response)) :], response
