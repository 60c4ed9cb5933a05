"""Loading and saving Hugging Face models from local folders (never from a hub), and the frozen reference copy."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError

from divalign.errors import UserError
from divalign.models.runtime import configure


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


#: What loading a model folder raises when its files are not what they should be.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)


def _load_error(path, exc: BaseException) -> UserError:
    if isinstance(exc, pickle.UnpicklingError):
        return UserError(f"'{path}': its pickled weights (*.bin) hold objects other than tensors, so they are refused "
                         "(nothing in them ran); convert the model to safetensors")
    lines = str(exc).strip().splitlines()
    return UserError(f"'{path}': cannot load the model ({lines[0][:300] if lines else type(exc).__name__})")


def check_causal_lm_folder(path: str | os.PathLike, trust_remote_code: bool = False) -> dict:
    """Validate that ``path`` holds a causal LM that AutoModelForCausalLM can load (custom code only when trusted);
    return its config dict."""
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
    if "auto_map" in config and not trust_remote_code:
        raise UserError(f"'{path}' needs custom code (config.json has auto_map); pass --trust-remote-code to allow it")
    return config


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
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
    fast_path: bool = True,
    compile: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """Load ``AutoModelForCausalLM`` and its tokenizer from a local folder (never from a hub), with dropout off and
    its forward path decided (:func:`divalign.models.runtime.configure`).

    ``trust_remote_code`` stays off unless asked: a folder whose config needs custom code is refused.
    """
    from transformers import AutoModelForCausalLM

    check_causal_lm_folder(path, trust_remote_code)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "local_files_only": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except LOAD_ERRORS as exc:
        raise _load_error(path, exc) from None
    tokenizer = load_tokenizer(path, trust_remote_code)
    disable_dropout(model)
    model = model.to(device)
    configure(model, fast_path=fast_path, compile=compile)
    return model, tokenizer


def load_reward_model(path, trust_remote_code: bool = False, seed: int = 0):
    """A one-label sequence classifier from a causal-LM or reward-model folder, and its tokenizer (a new head
    starts from ``seed``)."""
    from transformers import AutoModelForSequenceClassification

    check_causal_lm_folder(path, trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path,
                num_labels=1,
                pad_token_id=tokenizer.pad_token_id,
                trust_remote_code=trust_remote_code,
                local_files_only=True,
            )
        except LOAD_ERRORS as exc:
            raise _load_error(path, exc) from None
    disable_dropout(model)
    return model, tokenizer


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
    """A reference model: a deep copy with gradients off, in eval mode (it keeps the model's forward path)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return ref


def save_model(model, tokenizer, folder: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Save in the Hugging Face format (safetensors), loadable by ``from_pretrained``; ``state_dict``, when given,
    holds the weights (a sharded model's, gathered)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())
