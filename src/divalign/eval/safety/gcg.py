"""Greedy coordinate gradient (GCG) suffix attack (Zou et al. 2023, arXiv 2307.15043), bounded in steps.

Find ``suffix_length`` tokens s such that the model, given request + s, assigns high probability to an
affirmative target ("Sure, here is …"). Each step:

1. the loss L = −log π(target | request, s) and its gradient with respect to the one-hot encoding of s;
2. for every suffix position, the ``top_k`` tokens with the most negative gradient are the candidates;
3. ``candidates`` suffixes each replace one random position by one of its candidate tokens;
4. all candidates are scored in one batched forward pass and the best replaces s (only if it lowers L).

Works with any Hugging Face causal LM through ``inputs_embeds``; small models run on CPU in seconds per step.
The suffix uses only tokens that decode to visible text (no special, byte-fallback or blank tokens). The attack
succeeds when the greedy continuation of request + s begins with the target (``target_reached``); the caller can
also judge the generated text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from divalign.generation import make_sampler


@dataclass
class GCGResult:
    suffix: str
    suffix_ids: list[int]
    loss: float
    initial_loss: float
    steps: int
    target_reached: bool
    completion: str


def _target_loss(model, prefix_embeds, suffix_embeds, target_ids) -> torch.Tensor:
    """−Σ log π(target | prefix, suffix) for a batch of suffix embeddings (B, S, H); returns (B,)."""
    batch = suffix_embeds.shape[0]
    embed = model.get_input_embeddings()
    target_embeds = embed(target_ids).unsqueeze(0).expand(batch, -1, -1)
    inputs = torch.cat([prefix_embeds.expand(batch, -1, -1), suffix_embeds, target_embeds], dim=1)
    logits = model(inputs_embeds=inputs, use_cache=False).logits
    start = prefix_embeds.shape[1] + suffix_embeds.shape[1] - 1
    predicted = logits[:, start:start + len(target_ids)].float()
    return F.cross_entropy(predicted.transpose(1, 2), target_ids.unsqueeze(0).expand(batch, -1),
                           reduction="none").sum(-1)


def gcg_attack(model, tokenizer, request: str, target: str, *, steps: int = 50, suffix_length: int = 12,
               top_k: int = 64, candidates: int = 64, seed: int = 0, max_new_tokens: int = 32) -> GCGResult:
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    embed = model.get_input_embeddings()
    vocab, device = embed.weight.shape[0], embed.weight.device
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[[i for i in tokenizer.all_special_ids if i < vocab]] = False
    for i in range(min(vocab, len(tokenizer))):  # tokens that do not decode to text (byte pieces, blanks)
        if "\ufffd" in tokenizer.decode([i]) or not tokenizer.decode([i]).strip():
            allowed[i] = False
    # the random draws come from a CPU generator (the same suffixes on every device), then move to the model
    prefix_ids = torch.tensor(tokenizer(request + " ")["input_ids"], device=device)
    target_ids = torch.tensor(tokenizer(target, add_special_tokens=False)["input_ids"], device=device)
    allowed_ids = allowed.nonzero().squeeze(-1)
    top_k = min(top_k, len(allowed_ids))
    suffix = allowed_ids[torch.randint(len(allowed_ids), (suffix_length,), generator=generator)].to(device)
    allowed = allowed.to(device)
    with torch.no_grad():
        prefix_embeds = embed(prefix_ids).unsqueeze(0)
        best = float(_target_loss(model, prefix_embeds, embed(suffix).unsqueeze(0), target_ids)[0])
    initial = best
    for _ in range(steps):
        one_hot = F.one_hot(suffix, vocab).to(embed.weight.dtype).requires_grad_(True)
        loss = _target_loss(model, prefix_embeds, (one_hot @ embed.weight).unsqueeze(0), target_ids)[0]
        (grad,) = torch.autograd.grad(loss, one_hot)  # only the suffix's gradient; parameters keep no .grad
        grad[:, ~allowed] = float("inf")
        top = (-grad).topk(top_k, dim=-1).indices  # (S, k) most promising replacements per position
        positions = torch.randint(suffix_length, (candidates,), generator=generator).to(device)
        choices = top[positions, torch.randint(top_k, (candidates,), generator=generator).to(device)]
        trial = suffix.repeat(candidates, 1)
        trial[torch.arange(candidates, device=device), positions] = choices
        with torch.no_grad():
            losses = _target_loss(model, prefix_embeds, embed(trial), target_ids)
        index = int(losses.argmin())
        if float(losses[index]) < best:
            best, suffix = float(losses[index]), trial[index]
    ids = prefix_ids.tolist() + suffix.tolist()
    rollout = make_sampler(model, tokenizer).generate([ids], max_new_tokens, greedy=True)
    completion = tokenizer.decode(rollout.completion_ids[0], skip_special_tokens=True)
    reached = rollout.completion_ids[0, : len(target_ids)].tolist() == target_ids.tolist()
    return GCGResult(tokenizer.decode(suffix), suffix.tolist(), best, initial, steps, reached, completion)
