"""Tokenising preference data for forward passes: (prompt, response) rows that keep each pair's prompt shared, and
the right-padded rows a reward model scores."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from divalign.data.preferences import Pair, Unpaired
from divalign.data.tokens import Ragged, SequenceBatch, fit, pad


@dataclass
class Encoded:
    """Token ids of responses to prompts; ``group`` responses in a row share a prompt (2 for pairs)."""

    prompts: list[list[int]]  #: one per response
    responses: list[list[int]]
    group: int

    @functools.cached_property
    def _ragged(self) -> tuple[Ragged, Ragged]:
        return Ragged(self.prompts), Ragged(self.responses)

    def batch(self, rows: list[int], pad_id: int) -> SequenceBatch:
        prompts, responses = self._ragged
        index = torch.tensor(rows, dtype=torch.long)
        prompt_ids, prompt_mask = prompts.padded(index, pad_id, left=True)
        ids, mask = responses.padded(index, pad_id)
        return SequenceBatch(torch.cat([prompt_ids, ids], 1), torch.cat([prompt_mask, mask], 1), prompt_ids.shape[1])


def prompt_ids(tokenizer, prompt: str, templated: bool = False) -> list[int]:
    """A prompt's token ids: with the tokenizer's special tokens, unless the chat template already wrote them."""
    return tokenizer(prompt, add_special_tokens=not templated)["input_ids"]


def response_ids(tokenizer, response: str, templated: bool = False) -> list[int]:
    """A response's token ids: with the end-of-sequence token appended, unless the chat template ended the turn."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + ([] if templated else [tokenizer.eos_token_id])


def encode(tokenizer, prompts: list[str], responses: list[str], max_length: int, group: int,
           templated: list[bool] | None = None) -> Encoded:
    """Token ids of each (prompt, response + end-of-sequence), cut to ``max_length`` by :func:`fit`.

    The ``group`` responses of a prompt keep the same (shortest needed) prompt cut, so they can share one prompt
    forward pass. ``templated`` marks rows rendered by the chat template.
    """
    templated = templated or [False] * len(prompts)
    p_ids = [prompt_ids(tokenizer, p, t) for p, t in zip(prompts, templated)]
    r_ids = [response_ids(tokenizer, r, t) for r, t in zip(responses, templated)]
    out_p, out_r = [], []
    for start in range(0, len(p_ids), group):
        rows = range(start, start + group)
        keep = min(len(fit(p_ids[i], r_ids[i], max_length)[0]) for i in rows)
        for i in rows:
            prompt = p_ids[i][len(p_ids[i]) - keep:]
            out_p.append(prompt)
            out_r.append(r_ids[i][: max_length - len(prompt)])
    return Encoded(out_p, out_r, group)


def encode_dataset(tokenizer, items: list[Pair] | list[Unpaired], max_length: int, paired: bool) -> Encoded:
    """Pairs as groups of two rows (chosen, rejected), or unpaired responses one row each."""
    if paired:
        prompts = [p.prompt for p in items for _ in range(2)]
        responses = [r for p in items for r in (p.chosen, p.rejected)]
        return encode(tokenizer, prompts, responses, max_length, 2, [p.templated for p in items for _ in range(2)])
    return encode(tokenizer, [u.prompt for u in items], [u.completion for u in items], max_length, 1,
                  [u.templated for u in items])


def encode_texts(tokenizer, prompts: list[str], responses: list[str], max_length: int,
                 templated: list[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt + response ids and attention mask (a reward model's input); prompts lose their first
    tokens if too long."""
    rows = []
    for prompt, response, t in zip(prompts, responses, templated or [False] * len(prompts)):
        p, r = fit(prompt_ids(tokenizer, prompt, t), tokenizer(response, add_special_tokens=False)["input_ids"],
                   max_length)
        rows.append(p + r)
    return pad(rows, tokenizer.pad_token_id)
