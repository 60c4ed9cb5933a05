"""Generating responses for evaluation, with a cache on disk so an interrupted evaluation resumes.

Each finished batch of generations is appended to a JSONL cache (one line per prompt, flushed). A cache line is
keyed by the prompt text and the decoding settings, so a rerun skips every prompt already answered with the
same settings and only generates the rest; lines from other settings are ignored, never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from divalign.data.chat import Text, is_conversation, render
from divalign.data.encoding import prompt_ids
from divalign.generation import make_sampler
from divalign.tracking import progress


@dataclass(frozen=True)
class Decoding:
    max_new_tokens: int = 128
    greedy: bool = True
    temperature: float = 1.0
    seed: int = 0
    max_prompt_tokens: int = 0  #: keep only the last this many prompt tokens (0: the model's maximum)

    def key(self, model_id: str, prompt: str, sample: int = 0) -> str:
        payload = json.dumps([model_id, prompt, sample, asdict(self)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:24]


class GenerationCache:
    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        if self.path and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption
                self.entries[entry["key"]] = entry

    def add(self, entries: list[dict]) -> None:
        for entry in entries:
            self.entries[entry["key"]] = entry
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("".join(json.dumps(e) + "\n" for e in entries))
                handle.flush()


def render_prompt(tokenizer, prompt: Text, prompt_format: str, where: str = "prompt") -> tuple[str, bool]:
    """The text the model sees, and whether it comes from the chat template: a conversation through the template;
    a request as the user's message through the template when the tokenizer has one, else ``prompt_format``.
    ``where`` names the request in errors (its file and line)."""
    if is_conversation(prompt):
        return render(tokenizer, prompt, None, where).prompt, True
    if getattr(tokenizer, "chat_template", None):
        return render(tokenizer, (("user", prompt),), None, where).prompt, True
    return prompt_format.format(prompt=prompt), False


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Text], decoding: Decoding, *, cache: GenerationCache | None = None,
             model_id: str = "model", prompt_format: str = "{prompt}", batch_size: int = 32, samples: int = 1,
             desc: str = "generating", show_progress: bool = True) -> list[dict]:
    """Responses to ``prompts`` (dicts with ``response``, ``tokens`` and ``truncated``), reusing the cache.

    With ``samples`` > 1 each prompt is answered that many times (sampled decoding) and the result holds the
    responses prompt by prompt.
    """
    cache = cache or GenerationCache(None)
    keys = [decoding.key(model_id, p, j) for p in prompts for j in range(samples)]
    todo = [i for i in range(len(prompts)) if any(keys[i * samples + j] not in cache.entries for j in range(samples))]
    batch_size = max(1, batch_size // samples)
    context = getattr(model.config, "max_position_embeddings", 4096)
    # Prompts keep their last tokens; a response budget larger than the context never cuts them below half of it.
    limit = decoding.max_prompt_tokens or max(context // 2, context - decoding.max_new_tokens)
    sampler = make_sampler(model, tokenizer)
    was_training = model.training
    model.eval()
    bar = progress(len(prompts), initial=len(prompts) - len(todo), desc=desc, enabled=show_progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        ids = [prompt_ids(tokenizer, *render_prompt(tokenizer, prompts[i], prompt_format))[-max(1, limit):]
               for i in chunk]
        budget = max(1, min(decoding.max_new_tokens, context - max(map(len, ids))))
        # each prompt's draws from its own seed: a response does not depend on the batch it was generated in
        rollout = sampler.generate(ids, budget, decoding.temperature, greedy=decoding.greedy, num_samples=samples,
                                   seeds=[decoding.seed * 1_000_003 + i for i in chunk])
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        rows = [(i, j) for i in chunk for j in range(samples)]
        cache.add([{"key": keys[i * samples + j], "prompt": prompts[i], "sample": j, "response": text,
                    "tokens": int(length), "truncated": bool(truncated)}
                   for (i, j), text, length, truncated in zip(rows, texts, rollout.lengths.tolist(),
                                                              rollout.truncated.tolist())])
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return [cache.entries[k] for k in keys]
