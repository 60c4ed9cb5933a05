"""What every command does before it builds anything: check the output folder, find the checkpoint to resume from,
set up the process (threads, allocator, seed) — and, for training commands, what they do after."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
from transformers.utils import logging as transformers_logging

from divalign import parallel
from divalign.allocator import keep_freed_memory
from divalign.checkpoint import atomic_directory
from divalign.config import dump_yaml, to_dict
from divalign.errors import UserError
from divalign.models import configure, load_causal_lm, save_model
from divalign.models.adapters import add_lora, load_adapter, merged
from divalign.parallel import World, autocast, process_device, resolve_dtype
from divalign.tracking import Trackers, tracker_names
from divalign.trainers.loop import FINAL_MODEL, resume_point, run_steps

CONFIG_FILE = "config.yaml"
#: The folder of a LoRA run's merged model, next to the adapter's ``model/``.
MERGED_MODEL = "model-merged"


@dataclass
class Run:
    """A training run about to start: its folder, the checkpoint (with the trainer's state) to resume from, and the
    processes it runs on."""

    folder: Path
    checkpoint: Path | None
    state: dict | None
    world: World

    def model_path(self, start: str) -> str | Path:
        """The model to load: the checkpoint's when resuming, else ``start`` (with LoRA, see :meth:`base_path`)."""
        return self.checkpoint / FINAL_MODEL if self.checkpoint is not None else start

    def base_path(self, config) -> str | Path:
        """The model a training command loads before adapters: the checkpoint's when resuming a run without
        adapters, else ``config.model`` (a LoRA checkpoint holds only the adapter)."""
        return config.model if config.lora.r else self.model_path(config.model)


def trained_model(base, config, run: Run, classifier: bool = False):
    """The model a training command trains: ``base`` itself, or with LoRA (``--lora.r``) the base with adapters,
    a resumed run's read from its checkpoint (``classifier``: a reward model, whose score head trains too)."""
    if not config.lora.r:
        return base
    if run.checkpoint is not None:
        return load_adapter(base, run.checkpoint / FINAL_MODEL)
    lora = config.lora
    return add_lora(base, lora.r, lora.alpha, lora.dropout, lora.target_modules, classifier)


def prepare_run(config) -> Run:
    """The preamble of every training command, after its inputs are checked and before any model loads: refuse to
    write over another run or where nothing can be written, find the checkpoint of ``--resume``, configure the
    process, seed torch."""
    folder = check_output_dir(config.output_dir, config.resume)
    world = parallel.start(config.device)
    checkpoint, state = None, None
    if config.resume:  # the main process first: it removes what an interrupted write left
        if world.main:
            checkpoint, state = resume_point(folder)
        world.barrier()
        if not world.main:
            checkpoint, state = resume_point(folder)
    configure_process(config.threads, config.progress)
    torch.manual_seed(config.seed)
    return Run(folder, checkpoint, state, world)


def check_output_dir(path: str | os.PathLike, resume: bool) -> Path:
    """Refuse to write a new run over an existing one, or where the folder cannot be created or written (nothing
    is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder '{path}' is a file")
    if path.exists() and any(path.iterdir()) and not resume:
        raise UserError(f"output folder '{path}' already holds files; pass --resume to continue it or choose another")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        where = "it" if existing == path else f"'{existing}'"
        raise UserError(f"output folder '{path}' cannot be written ({where} is not a writable folder)")
    return path


def create_run_dir(path: Path, config, world_size: int = 1) -> None:
    """The run folder with its ``config.yaml`` (and the number of processes it ran on)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(dump_yaml(config) + f"# world_size: {world_size}\n")


def run_training(trainer, run: Run, config, total_steps: int, postfix_keys: tuple[str, ...] | None = None
                 ) -> list[dict]:
    """What every training command does once its trainer is built: create the run folder with its config,
    restore the checkpoint's state (``--resume``), and run the steps with the config's checkpointing."""
    if run.world.main:
        create_run_dir(run.folder, config, run.world.size)
    run.world.barrier()
    start = trainer.load_state_dict(run.state) if run.state is not None else 0
    extra = {"postfix_keys": postfix_keys} if postfix_keys else {}
    names = tracker_names(config.report_to)
    trackers = Trackers(names, run.folder, to_dict(config)) if names and run.world.main else None
    try:
        rows = run_steps(trainer, run.folder, total_steps, start_step=start, save_every=config.save_every,
                         keep_checkpoints=config.keep_checkpoints, show_progress=config.progress,
                         resumed=config.resume, max_consecutive_skips=config.max_consecutive_skips,
                         trackers=trackers, **extra)
    finally:
        if trackers is not None:
            trackers.close()
    if config.lora.r and config.merge and run.world.main:
        with atomic_directory(run.folder / MERGED_MODEL) as tmp:
            save_model(merged(trainer.policy), trainer.tokenizer, tmp)
    return rows


def configure_process(threads: int, progress: bool = True) -> None:
    """Process settings every command applies: torch's thread count (when given), an allocator that keeps freed
    memory between steps (:mod:`divalign.allocator`), and, without ``progress``, no progress bars from the
    libraries either (loading and saving models)."""
    keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)
    if not progress:
        transformers_logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def positive(config, *names: str) -> None:
    """Each named integer option must be at least 1."""
    for name in names:
        if getattr(config, name) < 1:
            raise UserError(f"{name.replace('_', '-')} must be >= 1 (got {getattr(config, name)})")


def non_negative(config, *names: str) -> None:
    """Each named integer option must be 0 or more (0 meaning "automatic")."""
    for name in names:
        if getattr(config, name) < 0:
            raise UserError(f"{name.replace('_', '-')} must be >= 0 (got {getattr(config, name)})")


def load_frozen(folder: str, config):
    """A causal LM that only reads (evaluation, generation, judging): frozen, on the command's device, its forward
    chosen for the command's precision (``config`` has DeviceOptions and ``trust_remote_code``)."""
    model, tokenizer = load_causal_lm(folder, trust_remote_code=config.trust_remote_code)
    model.requires_grad_(False).to(process_device(config.device))
    configure(model, dtype=resolve_dtype(config.dtype, process_device(config.device)))
    return model, tokenizer


def precision(config):
    """The context every forward of a reading command runs in: the command's precision (log-probabilities still
    come out in fp32)."""
    device = process_device(config.device)
    return autocast(device, resolve_dtype(config.dtype, device))


def check_prompt_format(prompt_format: str) -> None:
    """``--prompt-format`` must be a format string with one ``{prompt}`` field."""
    try:
        prompt_format.format(prompt="")
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"prompt-format: {prompt_format!r} is not a format with one {{prompt}} field "
                        f"({type(exc).__name__}: {exc})") from None
