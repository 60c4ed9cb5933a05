"""Atomic checkpoints and exact resume.

A checkpoint is written into a hidden temporary folder next to its final place, flushed to disk, and only then
renamed into place; the ``latest`` pointer is replaced atomically afterwards. A crash at any moment therefore
leaves either the previous checkpoint or the new one, complete, and never a half-written folder that resume
could pick up. Leftover temporary folders (of checkpoints, and of a final model whose writing was cut short) are
removed on the next resume.

A checkpoint holds the policy in the Hugging Face format (``model/``) and ``trainer_state.pt``: step, optimizer,
scheduler and RNG states. Batches and sampling seeds are pure functions of (seed, step), so this is all a run
needs to continue bit for bit. Resume reads files a user hands over, so it runs no code from them: the trainer
state loads with torch's restricted unpickler (tensors, numbers, strings and containers only), and the ``latest``
pointer must name a checkpoint folder of the run.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
from pathlib import Path

import torch

from divalign.errors import UserError
from divalign.models import save_model

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_FILE = "trainer_state.pt"
_TMP_PREFIX = ".tmp-"
#: The names of checkpoint folders, as :func:`save_checkpoint` writes them.
CHECKPOINT_NAME = re.compile(r"step-\d{8}")


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike):
    """Yield a temporary folder; on success it replaces ``final`` in one rename (an old ``final`` is removed)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.parent / f"{_TMP_PREFIX}{path.name}-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_checkpoint(run_dir: str | os.PathLike, step: int, model, tokenizer, state: dict, keep: int = 2,
                    model_state: dict | None = None) -> Path:
    """Write the model (``model_state`` when given: a sharded model's weights, gathered) and the trainer's state as
    one checkpoint, atomically; keep the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step-{step:08d}"
    with atomic_directory(final) as tmp:
        save_model(model, tokenizer, tmp / "model", model_state)
        torch.save(state, tmp / STATE_FILE)
    write_text_atomic(root / LATEST, final.name)
    complete = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run (after removing leftovers of interrupted writes)."""
    run_dir = Path(run_dir)
    remove_leftovers(run_dir)
    root = run_dir / CHECKPOINTS
    if not root.exists():
        return None
    remove_leftovers(root)
    pointer = root / LATEST
    if pointer.exists():
        name = pointer.read_text().strip()
        if not CHECKPOINT_NAME.fullmatch(name):
            raise UserError(f"{pointer}: names '{name}', which is not a checkpoint folder of this run (expected "
                            "step-NNNNNNNN inside its checkpoints/)")
        if (root / name / STATE_FILE).exists():
            return root / name
    complete = sorted(p for p in root.glob("step-*") if CHECKPOINT_NAME.fullmatch(p.name) and (p / STATE_FILE).exists())
    return complete[-1] if complete else None


def remove_leftovers(folder: Path) -> None:
    """Remove the temporary files and folders interrupted writes left in ``folder``."""
    for leftover in folder.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def load_state(checkpoint: Path) -> dict:
    """The trainer state of a checkpoint, through torch's restricted unpickler: a file holding anything but
    tensors, numbers, strings and containers is refused, and nothing in it runs."""
    path = checkpoint / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, TypeError, ValueError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's message opens with advice to load unsafely; the line naming the refused object is the reason
        named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
        reason = (named or lines or [type(exc).__name__])[0]
        raise UserError(f"{path}: refused: not a trainer state divalign wrote (it holds objects other than tensors, "
                        f"numbers and containers, or is damaged: {reason[:200]})") from None
