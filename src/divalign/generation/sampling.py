"""What every sampler returns, and the token sampler they share."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from divalign.data.tokens import SequenceBatch, pad


@dataclass
class Rollout:
    """Sampled completions for a batch of prompts.

    ``logprobs`` are the behaviour log-probabilities log π_old(y_t | ·) of the sampled tokens under the
    sampling distribution (logits / temperature), 0 on padding. ``truncated`` marks completions that hit the
    token budget without an end-of-sequence token.
    """

    prompt_ids: Tensor  #: (N, P), left-padded
    prompt_mask: Tensor  #: (N, P)
    completion_ids: Tensor  #: (N, T), right-padded with the pad token
    completion_mask: Tensor  #: (N, T) float, 1 on real completion tokens (the EOS token included)
    logprobs: Tensor  #: (N, T)
    truncated: Tensor  #: (N,) bool

    def sequences(self) -> SequenceBatch:
        return SequenceBatch(
            input_ids=torch.cat([self.prompt_ids, self.completion_ids], dim=1),
            attention_mask=torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1),
            prompt_length=self.prompt_ids.shape[1],
        )

    @property
    def lengths(self) -> Tensor:
        return self.completion_mask.sum(-1)

    def select(self, rows: Tensor) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def to(self, device) -> Rollout:
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def left_pad(prompts: list[list[int]], pad_id: int, device="cpu") -> tuple[Tensor, Tensor]:
    """Prompts left-padded to one width (so that generation continues every row at the same column)."""
    return pad(prompts, pad_id, left=True, device=device)


def prompt_uniforms(seeds: list[int], num_samples: int, steps: int, device="cpu") -> Tensor:
    """The uniform draws of sampling, (steps, rows, 1) with rows grouped by prompt: prompt i's ``num_samples`` rows
    take their draws from a generator seeded with ``seeds[i]`` alone, so a prompt's completions do not depend on
    which prompts share its batch (or its process). Costs one small generator per prompt."""
    draws = [torch.rand((steps, num_samples), generator=torch.Generator().manual_seed(seed)) for seed in seeds]
    return torch.cat(draws, dim=1).unsqueeze(-1).to(device)


def sample_next(logits: Tensor, temperature: float, greedy: bool, uniform: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Pick one token per row and return it with its log-probability under softmax(logits / temperature).

    Sampling inverts the CDF with one uniform draw u per row, (rows, 1), from ``uniform``: the token is the number
    of CDF entries at or below u (the last entry left out, so that a u rounded up to the total still picks the
    last token). That is a ``cumsum``, a comparison and a sum instead of ``torch.multinomial``, which is several
    times slower per call on CPU.
    """
    logits = logits.float()
    if temperature != 1.0 and not greedy:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    if greedy:
        tokens = logp.argmax(-1)
    else:
        cdf = logp.exp().cumsum_(-1)
        tokens = (cdf[:, :-1] <= uniform * cdf[:, -1:]).sum(-1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts of different prompt and completion widths (prompts re-padded on the left, completions on
    the right)."""
    if len(parts) == 1:
        return parts[0]
    width_p = max(r.prompt_ids.shape[1] for r in parts)
    width_c = max(r.completion_ids.shape[1] for r in parts)

    def left(t, width, value):
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    def right(t, width, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(
        prompt_ids=torch.cat([left(r.prompt_ids, width_p, pad_id) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, width_p, 0) for r in parts]),
        completion_ids=torch.cat([right(r.completion_ids, width_c, pad_id) for r in parts]),
        completion_mask=torch.cat([right(r.completion_mask, width_c, 0.0) for r in parts]),
        logprobs=torch.cat([right(r.logprobs, width_c, 0.0) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
    )
