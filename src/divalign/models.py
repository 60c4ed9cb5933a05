"""Loading and saving Hugging Face causal LMs, the frozen reference copy, and the one log-prob function.

Everything that needs per-token log-probabilities of completions (policy, reference, evaluation) calls
:func:`completion_logprobs`, so temperature, padding and precision are handled in one place.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from divalign import llama_fast, llama_train
from divalign.errors import UserError
from divalign.token_layout import position_ids
from divalign.token_logprobs import logprobs_from_logits


def _config_dict(path: Path) -> dict:
    config_file = path / "config.json"
    if not path.exists():
        raise UserError(f"model folder '{path}' does not exist")
    if not path.is_dir():
        raise UserError(f"model path '{path}' is a file; expected a Hugging Face model folder")
    if not config_file.exists():
        raise UserError(f"'{path}' is not a Hugging Face model folder: config.json is missing")
    try:
        return json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_file}: invalid JSON ({exc})") from None


def check_causal_lm_folder(path: str | os.PathLike) -> dict:
    """Validate that ``path`` holds a causal LM that AutoModelForCausalLM can load; return its config dict."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    config = _config_dict(path)
    model_type = config.get("model_type")
    if not model_type:
        raise UserError(f"{path / 'config.json'}: field 'model_type' is missing")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and "auto_map" not in config:
        raise UserError(
            f"'{path}' holds a '{model_type}' model, which is not a causal language model "
            "(AutoModelForCausalLM cannot load it)"
        )
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=False) if "auto_map" not in config else None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path / 'config.json'}: cannot be read as a model configuration ({exc})") from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(f"'{path}' has no weights (expected model.safetensors or pytorch_model.bin)")
    return config


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"'{path}': no usable tokenizer ({str(exc).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise UserError(f"'{path}': the tokenizer has neither a pad token nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """Load ``AutoModelForCausalLM`` and its tokenizer from a local folder (never from a hub).

    ``trust_remote_code`` stays off unless asked: a folder whose config needs custom code is refused.
    """
    from transformers import AutoModelForCausalLM

    config = check_causal_lm_folder(path)
    if "auto_map" in config and not trust_remote_code:
        raise UserError(f"'{path}' needs custom code (config.json has auto_map); pass --trust-remote-code to allow it")
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"'{path}': cannot load the model ({str(exc).splitlines()[0]})") from None
    tokenizer = load_tokenizer(path, trust_remote_code)
    disable_dropout(model)
    return model.to(device), tokenizer


def disable_dropout(model) -> None:
    """Set every dropout probability to 0 (modules and config fields such as ``attention_dropout``).

    Log-probabilities must not depend on train/eval mode: behaviour and reference log-probabilities are taken in
    eval mode and the policy's in train mode, and a resumed run must repeat the same numbers. TRL's RL and
    preference trainers do the same by default.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name, value in list(vars(model.config).items()):
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, 0.0)
    for module in model.modules():  # attention modules that copied the rate at construction
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def set_training(model, training: bool) -> None:
    """``model.train(training)``, skipped when the model is already in that mode (``Module.train`` walks every
    submodule, which costs a noticeable share of a small model's step)."""
    if model.training != training:
        model.train(training)


def frozen_copy(model):
    """A reference model: a deep copy with gradients off, in eval mode."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def save_model(model, tokenizer, folder: str | os.PathLike) -> None:
    """Save in the Hugging Face format (safetensors), loadable by ``from_pretrained``."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


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


@dataclass
class CompletionOutput:
    logprobs: Tensor  #: (B, T) log π(y_t | x, y_<t), fp32, 0 on padding
    entropy: Tensor | None  #: (B, T) entropy of the next-token distribution (no gradient), when asked
    hidden: Tensor | None  #: (B, T, hidden) last hidden state at the positions predicting each token, when asked
    reference_logprobs: Tensor | None = None  #: (B, T) the same under the reference model (no gradient), when given


def completion_logprobs(
    model,
    batch: SequenceBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group_size: int = 1,
    fast: bool = True,
    share_prompt: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log π(y_t | x, y_<t) of the completion tokens, (B, T), in fp32, 0 on padding; and the entropy
    when asked. See :func:`completion_forward`."""
    out = completion_forward(model, batch, temperature, with_entropy, group_size, fast, share_prompt=share_prompt)
    return out.logprobs, out.entropy


def completion_forward(
    model,
    batch: SequenceBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    group_size: int = 1,
    fast: bool = True,
    with_hidden: bool = False,
    share_prompt: bool | None = None,
    reference=None,
) -> CompletionOutput:
    """One forward pass over prompts + completions; the one place log-probabilities of completions come from.

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

    Llama-family models run through :mod:`divalign.llama_fast` (same values, fewer operations) unless
    ``fast=False``; with gradient (and the compiled forward off), through :mod:`divalign.llama_train` (a
    written-out backward, padding skipped, shared prompts once in the same pass, and the reference stacked in the
    same pass); every other model through its own Hugging Face forward.
    """
    prompt_len = batch.prompt_length
    tokens = batch.input_ids[:, prompt_len:]
    mask = batch.completion_mask
    fast_model = fast and llama_fast.supports(model)
    written_out = fast_model and torch.is_grad_enabled() and not llama_fast.compiled()
    if group_size > 1:
        _check_groups(batch, group_size)
        if share_prompt is None:  # the written-out path shares at no extra cost (token_layout)
            share_prompt = written_out or prompt_sharing_pays(model, batch, group_size)
        if not share_prompt:
            group_size = 1  # one pass over whole rows
    if written_out and not with_hidden:
        stacked = reference if llama_train.same_shape(model, reference) else None
        logp, entropy, ref_logp = llama_train.completion_logprobs(
            model, batch.input_ids, batch.attention_mask, prompt_len, group_size, stacked, temperature, with_entropy)
        if reference is not None and ref_logp is None:
            ref_logp = _reference_logprobs(reference, batch, temperature, group_size, fast)
        return CompletionOutput(logp, entropy, None, ref_logp)
    hidden = None
    if written_out:
        hidden = llama_train.completion_hidden(model, batch.input_ids, batch.attention_mask, prompt_len, group_size)
        logits = model.lm_head(hidden)
    elif fast_model:
        hidden, w = llama_fast.completion_hidden(model, batch.input_ids, batch.attention_mask, prompt_len, group_size)
        logits = llama_fast.logits_of(hidden, w)
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
    ref_logp = None if reference is None else _reference_logprobs(reference, batch, temperature, group_size, fast)
    return CompletionOutput(logp, entropy, hidden if with_hidden else None, ref_logp)


def _reference_logprobs(reference, batch: SequenceBatch, temperature: float, group_size: int, fast: bool) -> Tensor:
    with torch.no_grad():
        return completion_forward(reference, batch, temperature, group_size=group_size, fast=fast,
                                  share_prompt=group_size > 1).logprobs


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    logits = logits.float()
    return logits / temperature if temperature != 1.0 else logits


#: Break-even of prompt sharing, in saved prompt tokens × model parameters. Sharing adds a pass whose cost is
#: mostly a fixed number of operations, repaid by the prompt tokens it saves, whose cost grows with the model.
#: Measured with the 0.5M-parameter speed model on 2 CPU cores (benchmarks/dpo_profile.py --share-prompt
#: always|never): saving 56 prompt tokens per step (8 pairs) made the DPO step 8–15 % slower, saving 112 (16
#: pairs) left it unchanged. Models of a few million parameters and up share whenever a prompt repeats.
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


def segment_positions(segment_ids: Tensor) -> Tensor:
    """Position of every token within its segment (segments are runs of equal ids along each row)."""
    index = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


def segment_logprobs(model, input_ids: Tensor, segment_ids: Tensor, fast: bool = True) -> Tensor:
    """log π(x_t | earlier tokens of the same segment) for t = 1 … L − 1, as a (B, L − 1) tensor.

    Rows may pack several sequences: ``segment_ids`` (B, L) numbers them 1, 2, … and marks padding 0. Attention
    never crosses a segment boundary and positions restart at 0 in each segment, so a packed row gives the same
    values as its sequences run one by one. The first token of each segment and padding get 0.
    """
    positions = segment_positions(segment_ids)
    length = input_ids.shape[1]
    causal = torch.ones((length, length), dtype=torch.bool, device=input_ids.device).tril()
    real = segment_ids != 0
    allowed = causal & (segment_ids[:, :, None] == segment_ids[:, None, :]) & real[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=input_ids.device)  # padding rows see themselves
    if fast and llama_fast.supports(model):
        logits = llama_fast.packed_logits(model, input_ids, positions, allowed)
    else:
        logits = model(
            input_ids=input_ids, attention_mask=allowed.unsqueeze(1), position_ids=positions, use_cache=False
        ).logits
    targets = input_ids[:, 1:]
    valid = (segment_ids[:, 1:] == segment_ids[:, :-1]) & real[:, 1:]
    logp, _ = logprobs_from_logits(logits[:, :-1].float(), targets, valid)
    return logp


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
