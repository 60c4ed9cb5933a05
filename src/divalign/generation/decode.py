"""The autoregressive loop shared by every model, and the generic decoder for any causal LM.

A decoder only has to say how to run the prompt (``prefill``), how to advance one token (``step``) and how to
repeat its state for several samples per prompt (``repeat``); the loop, the stopping rule, the padding and the
behaviour log-probabilities live here once, in :class:`Sampler`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import torch
from torch import Tensor

from divalign.generation.sampling import Rollout, left_pad, prompt_uniforms, sample_next
from divalign.models.positions import position_ids

#: steps between checks whether every row has ended
CHECK_EVERY = 4


class Decoder(Protocol):
    """How one model runs during decoding."""

    def prefill(self, ids: Tensor, mask: Tensor, max_new_tokens: int) -> tuple[Any, Tensor]:
        """Run the left-padded prompts; return the decoding state and the logits of the next token."""

    def step(self, state: Any, tokens: Tensor) -> Tensor:
        """Feed one token per row; return the logits of the next one."""

    def repeat(self, state: Any, times: int) -> Any:
        """Repeat every row of the decoding state ``times`` times (consecutively)."""

    def refresh(self) -> None:
        """Called after every optimizer step; decoders that keep copies of the weights re-read them (by the next
        prefill at the latest)."""

    def release(self) -> None:
        """Called when no generation is due for a while (a trainer's rollouts collected); decoders may free what
        they keep for decoding until the next prefill."""


class Sampler:
    """Samples completions with a :class:`Decoder`; ``generate`` is the loop."""

    def __init__(self, model, tokenizer, decoder: Decoder):
        self.model, self.decoder = model, decoder
        self.pad_id = tokenizer.pad_token_id
        eos = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_ids = torch.tensor(sorted(e for e in eos if e is not None), dtype=torch.long)

    def refresh(self) -> None:
        """Let the decoder re-read the model's weights (after every optimizer step)."""
        self.decoder.refresh()

    def release(self) -> None:
        """Let the decoder free what it keeps for decoding until the next generation (:meth:`Decoder.release`)."""
        self.decoder.release()

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        greedy: bool = False,
        seeds: list[int] | None = None,
        num_samples: int = 1,
    ) -> Rollout:
        """Complete each prompt ``num_samples`` times; rows of the rollout are grouped by prompt. Sampling (not
        ``greedy``) needs one seed per prompt: a prompt's draws come from its seed alone
        (:func:`~divalign.generation.sampling.prompt_uniforms`).

        Each prompt is run once and its cache is repeated for its samples. Decoding runs in inference mode (no
        autograd bookkeeping at all, about a tenth of a small model's decode step on CPU); the rollout comes back
        as ordinary tensors, which a later backward may save.
        """
        if not greedy and (seeds is None or len(seeds) != len(prompts)):
            raise ValueError("sampling needs one seed per prompt")
        with torch.inference_mode():
            rollout = self._generate(prompts, max_new_tokens, temperature, greedy, seeds, num_samples)
        return Rollout(**{f.name: getattr(rollout, f.name).clone() for f in dataclasses.fields(rollout)})

    def _generate(self, prompts, max_new_tokens, temperature, greedy, seeds, num_samples) -> Rollout:
        device = next(self.model.parameters()).device
        uniforms = None if greedy else prompt_uniforms(seeds, num_samples, max_new_tokens, device)
        ids, mask = left_pad(prompts, self.pad_id, device)
        state, logits = self.decoder.prefill(ids, mask, max_new_tokens)
        if num_samples > 1:
            state = self.decoder.repeat(state, num_samples)
            logits = logits.repeat_interleave(num_samples, 0)
            ids, mask = ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
        eos = self.eos_ids.to(device)
        is_eos = torch.zeros(max([logits.shape[-1], *(eos + 1).tolist()]), dtype=torch.bool, device=device)
        is_eos[eos] = True
        sampled, sampled_logps = [], []
        for t in range(max_new_tokens):
            # Rows that finished keep decoding until all have (their tokens are masked below); checking only
            # every CHECK_EVERY steps saves a synchronisation per token.
            tok, lp = sample_next(logits, temperature, greedy, None if greedy else uniforms[t])
            sampled.append(tok)
            sampled_logps.append(lp)
            if t + 1 == max_new_tokens or (
                t % CHECK_EVERY == CHECK_EVERY - 1 and bool(is_eos[torch.stack(sampled)].any(0).all())
            ):
                break
            logits = self.decoder.step(state, tok)
        tokens = torch.stack(sampled, dim=1)
        # A token is part of the completion if no end-of-sequence token came before it.
        eos_hits = is_eos[tokens].long()
        live = (eos_hits.cumsum(1) - eos_hits) == 0
        width = int(live.any(0).nonzero().max()) + 1  # drop the steps taken after every row had finished
        tokens, live, sampled_logps = tokens[:, :width], live[:, :width], sampled_logps[:width]
        return Rollout(
            prompt_ids=ids,
            prompt_mask=mask,
            completion_ids=torch.where(live, tokens, self.pad_id),
            completion_mask=live.float(),
            logprobs=torch.where(live, torch.stack(sampled_logps, dim=1), 0.0),
            truncated=eos_hits.sum(1) == 0,
        )


class HFDecoder:
    """Works with any ``AutoModelForCausalLM`` through its own forward and key-value cache."""

    def __init__(self, model):
        self.model = model

    def refresh(self) -> None:
        """Nothing to re-read: the model's own forward runs on its live weights."""

    def release(self) -> None:
        """Nothing kept between generations."""

    def prefill(self, ids, mask, max_new_tokens):
        pos = position_ids(mask)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        state = {"cache": out.past_key_values, "mask": mask, "next_pos": pos[:, -1] + 1}
        return state, out.logits[:, -1]

    def repeat(self, state, times):
        state["cache"].batch_repeat_interleave(times)
        state["mask"] = state["mask"].repeat_interleave(times, 0)
        state["next_pos"] = state["next_pos"].repeat_interleave(times, 0)
        return state

    def step(self, state, tokens):
        state["mask"] = torch.cat([state["mask"], state["mask"].new_ones((tokens.shape[0], 1))], dim=1)
        pos = state["next_pos"]
        out = self.model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=state["mask"],
            position_ids=pos.unsqueeze(-1),
            past_key_values=state["cache"],
            use_cache=True,
        )
        state["cache"] = out.past_key_values
        state["next_pos"] = pos + 1
        return out.logits[:, -1]
