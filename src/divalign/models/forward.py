"""Forward passes over prompts and completions: the one place log-probabilities of completions come from.

Everything that needs per-token log-probabilities (policy, reference, evaluation) calls :func:`completion_forward`
(or :func:`completion_logprobs`), so temperature, padding, prompt sharing and the choice of kernels are handled in
one place. Which kernels run is the model's :class:`~divalign.models.runtime.Runtime`: the Llama kernels of
:mod:`divalign.models.llama` (with gradient, the written-out training pass unless compiled) or the model's own
Hugging Face forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from divalign.data.tokens import SequenceBatch
from divalign.models.llama import functional, train
from divalign.models.loading import param_count
from divalign.models.logprobs import logprobs_from_logits
from divalign.models.positions import position_ids, segment_mask, segment_positions
from divalign.models.runtime import runtime_of


@dataclass
class CompletionOutput:
    logprobs: Tensor  #: (B, T) log π(y_t | x, y_<t), fp32, 0 on padding
    entropy: Tensor | None  #: (B, T) entropy of the next-token distribution (no gradient), when asked
    hidden: Tensor | None  #: (B, T, hidden) last hidden state at the positions predicting each token, when asked
    reference_logprobs: Tensor | None = None  #: (B, T) the same under the reference model (no gradient), when given


def completion_logprobs(model, batch: SequenceBatch, temperature: float = 1.0, with_entropy: bool = False,
                        group_size: int = 1, share_prompt: bool | None = None) -> tuple[Tensor, Tensor | None]:
    """Per-token log π(y_t | x, y_<t) of the completion tokens, (B, T), in fp32, 0 on padding; and the entropy
    when asked. See :func:`completion_forward`."""
    out = completion_forward(model, batch, temperature, with_entropy, group_size, share_prompt=share_prompt)
    return out.logprobs, out.entropy


def completion_forward(
    model,
    batch: SequenceBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group_size: int = 1,
    with_hidden: bool = False,
    share_prompt: bool | None = None,
    reference=None,
) -> CompletionOutput:
    """One forward pass over prompts + completions.

    Logits are divided by ``temperature`` so that the result matches the distribution that sampled the
    completions. Only the logits of completion positions are computed. The entropy of the next-token
    distribution is computed without gradient when asked (a diagnostic, not part of any loss); the hidden states
    feed a value head. With a ``reference`` model, its log-probabilities of the same tokens come back too,
    without gradient.

    With ``group_size`` G > 1, consecutive rows come in groups of G that share one prompt (as in GRPO): the
    prompt can run once per group, its key-value cache repeated for the G completions. Gradients reach the prompt
    through the cache, so values and gradients equal the unshared computation; the forward does G-fold less work
    on prompt tokens but runs in two passes. ``share_prompt`` True or False forces the choice; None shares when
    :func:`prompt_sharing_pays`.

    A Llama model on the fast path runs through :mod:`divalign.models.llama`: with gradient (and the compiled
    forward off) the written-out training pass, which shares prompts at no extra cost and runs a reference of the
    same shape stacked in the same pass; otherwise the functional forward. Every other model runs its own
    Hugging Face forward.
    """
    runtime = runtime_of(model)
    prompt_len = batch.prompt_length
    tokens = batch.input_ids[:, prompt_len:]
    mask = batch.completion_mask
    written_out = runtime.lean and torch.is_grad_enabled() and not runtime.compiled
    if group_size > 1:
        _check_groups(batch, group_size)
        if share_prompt is None:  # the written-out path shares at no extra cost (layout)
            share_prompt = written_out or prompt_sharing_pays(model, batch, group_size)
        if not share_prompt:
            group_size = 1  # one pass over whole rows
    if written_out and not with_hidden:
        ref_params = None if reference is None else runtime_of(reference).llama
        stacked = ref_params if train.same_shape(runtime.llama, ref_params) else None
        logp, entropy, ref_logp = train.completion_logprobs(
            runtime.llama, batch.input_ids, batch.attention_mask, prompt_len, group_size, stacked, temperature,
            with_entropy)
        if reference is not None and ref_logp is None:
            ref_logp = _reference_logprobs(reference, batch, temperature, group_size)
        return CompletionOutput(logp, entropy, None, ref_logp)
    hidden = None
    if written_out:
        hidden = train.completion_hidden(runtime.llama, batch.input_ids, batch.attention_mask, prompt_len, group_size)
        logits = model.lm_head(hidden)
    elif runtime.lean:
        forward = functional.compiled_completion_hidden() if runtime.compiled else functional.completion_hidden
        hidden, w = forward(runtime.llama, batch.input_ids, batch.attention_mask, prompt_len, group_size)
        logits = functional.logits_of(hidden, w)
    elif group_size > 1 and tokens.shape[1] > 0:
        logits, hidden = _shared_prompt_logits(model, batch, group_size, with_hidden)
    else:
        out = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),
            logits_to_keep=tokens.shape[1] + 1,
            use_cache=False,
            output_hidden_states=with_hidden,
        )
        logits = out.logits[:, :-1]
        if with_hidden:
            hidden = out.hidden_states[-1][:, prompt_len - 1 : -1]
    logp, entropy = logprobs_from_logits(_scaled(logits, temperature), tokens, mask, with_entropy)
    ref_logp = None if reference is None else _reference_logprobs(reference, batch, temperature, group_size)
    return CompletionOutput(logp, entropy, hidden if with_hidden else None, ref_logp)


def _reference_logprobs(reference, batch: SequenceBatch, temperature: float, group_size: int) -> Tensor:
    with torch.no_grad():
        return completion_forward(reference, batch, temperature, group_size=group_size,
                                  share_prompt=group_size > 1).logprobs


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float()
    return logits / temperature if temperature != 1.0 else logits


#: Break-even of prompt sharing, in saved prompt tokens × model parameters. Sharing adds a pass whose cost is
#: mostly a fixed number of operations, repaid by the prompt tokens it saves, whose cost grows with the model; the
#: measurement behind the figure is in BENCHMARKS.md ("Figures behind choices in the code").
PROMPT_SHARING_BREAK_EVEN = 5e7


def prompt_sharing_pays(model, batch: SequenceBatch, group_size: int) -> bool:
    """Whether running each group's prompt once saves more than its extra pass costs (see
    :data:`PROMPT_SHARING_BREAK_EVEN`)."""
    rows = batch.input_ids.shape[0]
    saved_tokens = (rows - rows // group_size) * batch.prompt_length
    return saved_tokens * param_count(model) >= PROMPT_SHARING_BREAK_EVEN


def _check_groups(batch: SequenceBatch, group_size: int) -> None:
    prompts = batch.input_ids[:, : batch.prompt_length]
    if prompts.shape[0] % group_size or not torch.equal(
        prompts[::group_size].repeat_interleave(group_size, 0), prompts
    ):
        raise ValueError(f"rows do not come in groups of {group_size} sharing a prompt")


def _shared_prompt_logits(model, batch: SequenceBatch, group_size: int, with_hidden: bool = False):
    """Logits (and last hidden states) predicting each completion token, running each group's prompt once (see
    completion_forward)."""
    prompt_len = batch.prompt_length
    prompt_ids = batch.input_ids[::group_size, :prompt_len]
    prompt_mask = batch.attention_mask[::group_size, :prompt_len]
    prompt_pos = position_ids(prompt_mask)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos, use_cache=True,
                logits_to_keep=1, output_hidden_states=with_hidden)
    first = out.logits[:, -1:].repeat_interleave(group_size, 0)
    first_hidden = out.hidden_states[-1][:, -1:].repeat_interleave(group_size, 0) if with_hidden else None
    completion = batch.input_ids[:, prompt_len:-1]
    if completion.shape[1] == 0:
        return first, first_hidden
    cache = out.past_key_values
    cache.batch_repeat_interleave(group_size)
    offsets = torch.arange(1, completion.shape[1] + 1, device=completion.device)
    pos = prompt_pos[:, -1:].repeat_interleave(group_size, 0) + offsets
    rest = model(input_ids=completion, attention_mask=batch.attention_mask[:, :-1], position_ids=pos,
                 past_key_values=cache, use_cache=True, output_hidden_states=with_hidden)
    hidden = torch.cat([first_hidden, rest.hidden_states[-1]], dim=1) if with_hidden else None
    return torch.cat([first, rest.logits], dim=1), hidden


def segment_logprobs(model, input_ids: Tensor, segment_ids: Tensor) -> Tensor:
    """log π(x_t | earlier tokens of the same segment) for t = 1 … L − 1, as a (B, L − 1) tensor.

    Rows may pack several sequences: ``segment_ids`` (B, L) numbers them 1, 2, … and marks padding 0. Attention
    never crosses a segment boundary and positions restart at 0 in each segment, so a packed row gives the same
    values as its sequences run one by one. The first token of each segment and padding get 0.
    """
    positions = segment_positions(segment_ids)
    allowed = segment_mask(segment_ids)
    runtime = runtime_of(model)
    if runtime.lean:
        logits = functional.packed_logits(runtime.llama, input_ids, positions, allowed)
    else:
        logits = model(
            input_ids=input_ids, attention_mask=allowed.unsqueeze(1), position_ids=positions, use_cache=False
        ).logits
    targets = input_ids[:, 1:]
    real = segment_ids != 0
    valid = (segment_ids[:, 1:] == segment_ids[:, :-1]) & real[:, 1:]
    logp, _ = logprobs_from_logits(logits[:, :-1].float(), targets, valid)
    return logp


def sequence_scores(model, ids: Tensor, mask: Tensor) -> Tensor:
    """The scalar score of each row of a one-label sequence classifier (a reward model), in fp32."""
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0].float()
