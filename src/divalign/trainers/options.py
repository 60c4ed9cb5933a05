"""Option groups shared by the training commands, each declared once with a docstring under every field (the
``--help`` text). A command's config inherits the groups it needs and may change their defaults by declaring a
field again without a docstring. A group that checks its values does so in ``__post_init__`` and then hands over to
the next group of the config (:func:`next_check`), so every group's checks run whatever the combination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from divalign import objectives
from divalign.config import OBJECTIVE_OPTIONS
from divalign.models.adapters import ALL_LINEAR
from divalign.parallel import DEVICES, DTYPES
from divalign.tracking import tracker_names
from divalign.trainers.engine import SHARDINGS


def next_check(group, cls) -> None:
    """Run the ``__post_init__`` of the group after ``cls`` in ``group``'s config (if any)."""
    following = getattr(super(cls, group), "__post_init__", None)
    if following is not None:
        following()


@dataclass
class ModelOptions:
    """The model to start from."""

    model: str = ""
    """Folder of the model to start from (Hugging Face format, with its tokenizer)."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code."""


@dataclass
class ForwardOptions:
    """How a causal LM's forward passes run (decided once per model: divalign.models.runtime)."""

    fast_path: bool = True
    """Run Llama-family models through divalign's own kernels (other models always use their Hugging Face
    forward)."""


@dataclass
class DeviceOptions:
    """Where a command's passes run and in which precision (divalign.parallel)."""

    device: str = "auto"
    """cpu, cuda, or auto (cuda when this torch sees a GPU); each process of a torchrun launch takes the GPU of its
    local rank."""
    dtype: str = "auto"
    """Compute precision: fp32, bf16 or fp16 (torch.autocast; weights and optimizer state stay fp32, fp16 with loss
    scaling), or auto (bf16 on a GPU that supports it, else fp32)."""

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device: expected one of {', '.join(DEVICES)} (got '{self.device}')")
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype: expected one of auto, {', '.join(DTYPES)} (got '{self.dtype}')")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda was asked for, but this torch sees no GPU (use --device cpu or auto)")
        next_check(self, DeviceOptions)


@dataclass
class TrainingDeviceOptions(DeviceOptions):
    """The device options of a training command, with the memory and multi-process ones."""

    gradient_checkpointing: bool = False
    """Recompute activations in the backward instead of keeping them (less memory, about a third more compute; runs
    the model's Hugging Face forward)."""
    sharding: str = "ddp"
    """With several processes (torchrun): ddp (each process holds the whole model) or fsdp (FSDP2: parameters,
    gradients and optimizer state sharded over the processes)."""

    def __post_init__(self):
        if self.sharding not in SHARDINGS:
            raise ValueError(f"sharding: expected one of {', '.join(SHARDINGS)} (got '{self.sharding}')")
        super().__post_init__()


@dataclass
class LoraOptions:
    """LoRA adapters through PEFT (divalign.models.adapters)."""

    r: int = 0
    """Rank of the adapters (0: no adapters, the whole model trains)."""
    alpha: float = 16.0
    """The adapters' output is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapters' input."""
    target_modules: str = ALL_LINEAR
    """Modules that get adapters: all-linear (every linear layer but the output head) or comma-separated names
    (q_proj,k_proj,v_proj,o_proj)."""

    def __post_init__(self):
        if self.r < 0:
            raise ValueError(f"lora.r must be >= 0 (got {self.r})")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"lora.alpha must be a number > 0 (got {self.alpha})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1) (got {self.dropout})")
        if not self.target_modules.strip():
            raise ValueError("lora.target_modules is empty")


@dataclass
class AdapterOptions:
    """Train adapters instead of the whole model, and what to save."""

    lora: LoraOptions = field(default_factory=LoraOptions)
    merge: bool = False
    """With LoRA, also write the model with the adapter merged into its weights (a plain Hugging Face folder) as
    model-merged/ next to the adapter's model/."""


@dataclass
class CompileOptions(ForwardOptions):
    """The fast path's forward options, for commands whose training pass can be compiled."""

    compile: bool = False
    """Compile the Llama training and scoring forward with torch.compile (slow start; see the README)."""


@dataclass
class RunOptions:
    """The run folder, seed and process settings every training command has."""

    output_dir: str = "runs/run"
    """Run folder: config.yaml, metrics.jsonl, checkpoints/ and the final model/."""
    seed: int = 0
    """Seed of data order, sampling and initialisation."""
    resume: bool = False
    """Continue the run in output_dir from its latest checkpoint."""
    save_every: int = 0
    """Checkpoint every this many steps (0: only the final model)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    max_consecutive_skips: int = 3
    """Stop the run after this many steps in a row whose update was left out (non-finite loss or gradient)."""
    report_to: str = "none"
    """Experiment trackers that also get every step's metrics and the config (metrics.jsonl is always written):
    none, or any of tensorboard, wandb, trackio, mlflow, comma-separated (each an optional extra:
    pip install 'divalign[tensorboard]')."""

    def __post_init__(self):
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1 (got {self.max_consecutive_skips})")
        tracker_names(self.report_to)
        next_check(self, RunOptions)
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show a progress bar on the console."""


@dataclass
class OptimizerOptions:
    """AdamW, its learning-rate schedule and gradient clipping (what divalign.trainers.optim reads)."""

    learning_rate: float = 1e-5
    """Peak learning rate of AdamW."""
    lr_schedule: str = "constant"
    """constant, linear or cosine (after warm-up)."""
    warmup_steps: int = 0
    """Linear warm-up, in optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables)."""

    def __post_init__(self):
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a finite number > 0 (got {self.learning_rate})")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0 (got {self.weight_decay})")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"max_grad_norm must be a finite number >= 0 (got {self.max_grad_norm})")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        next_check(self, OptimizerOptions)


@dataclass
class BatchOptions:
    """Batches of a dataset (SFT, reward model, offline preference training)."""

    max_length: int = 256
    """Maximum tokens of prompt + response; prompts are cut from the left, responses from the right."""
    batch_size: int = 8
    """Examples (rows, pairs or responses) per optimizer step."""
    micro_batch_size: int = 0
    """Examples per forward/backward (0: the whole batch); losses are normalised by the whole batch."""
    epochs: float = 1.0
    """Passes over the data (used when steps is 0)."""
    steps: int = 0
    """Optimizer steps (0: derived from epochs)."""
    eval_every: int = 0
    """Evaluate on the held-out data every this many steps (0: only at the end)."""

    def __post_init__(self):
        if self.steps == 0 and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ValueError(f"epochs must be a number > 0 when steps is 0 (got {self.epochs})")
        next_check(self, BatchOptions)


@dataclass
class DataOptions:
    """A training file and its held-out counterpart."""

    data: str = ""
    """Training data: a file (JSONL, JSON, CSV, Parquet; data:PATH reads from the shared data folder) or, for
    preference data, a built-in dataset (hh-rlhf:harmless-base, hh-rlhf:helpful-base, advbench)."""
    eval_data: str = ""
    """Optional held-out data in the same format."""
    prompt_field: str = "prompt"
    """Field holding the prompt."""


@dataclass
class PairDataOptions(DataOptions):
    """Preference pairs: their fields, and how the held-out split is made."""

    eval_fraction: float = 0.1
    """Share of the prompts held out for evaluation when eval_data is empty (0: none)."""
    chosen_field: str = "chosen"
    """Field holding the preferred response."""
    rejected_field: str = "rejected"
    """Field holding the dispreferred response."""
    drop_identical_pairs: bool = False
    """Leave out pairs whose chosen and rejected are identical (with a warning) instead of stopping."""


@dataclass
class ObjectiveChoice:
    """An objective from the registry (one of ``families``) and its options, given as ``--NAME.OPTION`` flags or a
    ``NAME:`` mapping in YAML for the chosen objective only (divalign.config builds them)."""

    objective: str = ""
    """Objective to train with; its options are the flags of its own group below."""
    objective_options: Any = field(default=None, metadata={OBJECTIVE_OPTIONS: True})

    #: The objective families a command accepts (see divalign.objectives.registry).
    families: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        chosen = objectives.get(self.objective, self.families)
        if self.objective_options is None:
            self.objective_options = chosen.options()
        elif not isinstance(self.objective_options, chosen.options):
            raise ValueError(f"options of type {type(self.objective_options).__name__} given for objective "
                             f"'{self.objective}' (expected {chosen.options.__name__})")
        next_check(self, ObjectiveChoice)

    @property
    def chosen(self) -> objectives.Objective:
        """The registered objective."""
        return objectives.get(self.objective, self.families)
