"""Pieces shared by commands: output folders, threads, the run's saved config."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from divalign.allocator import keep_freed_memory
from divalign.config import dump_yaml
from divalign.errors import UserError

CONFIG_FILE = "config.yaml"


def check_output_dir(path: str | os.PathLike, resume: bool) -> Path:
    """Refuse to write a new run over an existing one (nothing is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output folder '{path}' is a file")
    if path.exists() and any(path.iterdir()) and not resume:
        raise UserError(f"output folder '{path}' already holds files; pass --resume to continue it or choose another")
    return path


def create_run_dir(path: Path, config) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(dump_yaml(config))


def run_training(trainer, run_dir: str | os.PathLike, config, state: dict | None, total_steps: int,
                 postfix_keys: tuple[str, ...] | None = None) -> list[dict]:
    """What every training command does once its inputs are checked: create the run folder with its config,
    restore a checkpoint's ``state`` (``--resume``), and run the steps with the config's checkpointing."""
    from divalign.trainers.loop import run_steps

    create_run_dir(Path(run_dir), config)
    start = trainer.load_state_dict(state) if state is not None else 0
    extra = {"postfix_keys": postfix_keys} if postfix_keys else {}
    return run_steps(trainer, run_dir, total_steps, start_step=start, save_every=config.save_every,
                     keep_checkpoints=config.keep_checkpoints, show_progress=config.progress,
                     resumed=config.resume, **extra)


def configure_cpu(threads: int) -> None:
    """Process settings every command applies: torch's thread count (when given) and an allocator that keeps
    freed memory between steps (:mod:`divalign.allocator`)."""
    keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)


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
