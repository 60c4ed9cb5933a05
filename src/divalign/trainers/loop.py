"""The outer loop every trainer shares (steps, metrics log, progress bar, checkpoints, final model), and the
timing and metric sums a step reports."""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from divalign.checkpoint import atomic_directory, latest_checkpoint, load_state, save_checkpoint
from divalign.errors import RunFailed
from divalign.models import save_model
from divalign.parallel import World
from divalign.tracking import MetricsLog, progress
from divalign.trainers.engine import weights_finite
from divalign.trainers.health import RunWatch

FINAL_MODEL = "model"


class Clock:
    """Seconds spent in named parts of a step (``with clock("optimizer_s"): …`` adds up), and since it started."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class MetricSums:
    """Metrics summed over a step's micro-batches and updates (each objective metric is a micro-batch's additive
    share of its minibatch's value), averaged over the updates at the end."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.updates: list[dict] = []

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        n = max(len(self.updates), 1)
        return {key: value / n for key, value in self.sums.items()}


def resume_point(run_dir: str | os.PathLike) -> tuple[Path | None, dict | None]:
    """The latest complete checkpoint of a run and its trainer state, or (None, None)."""
    ckpt = latest_checkpoint(run_dir)
    return (ckpt, load_state(ckpt)) if ckpt is not None else (None, None)


def run_steps(
    trainer,
    run_dir: str | os.PathLike,
    total_steps: int,
    *,
    start_step: int = 0,
    save_every: int = 0,
    keep_checkpoints: int = 2,
    show_progress: bool = True,
    resumed: bool = False,
    postfix_keys: tuple[str, ...] = ("reward_mean", "kl"),
    max_seconds: float | None = None,
    stop: Callable[[], bool] | None = None,
    max_consecutive_skips: int = 3,
    trackers=None,
) -> list[dict]:
    """Run ``trainer.step`` from ``start_step`` to ``total_steps`` (or until ``max_seconds`` of training time, or
    until ``stop()``, asked after each step, returns True); log, checkpoint, save the final model. With
    ``resumed`` the metrics log first drops rows after ``start_step`` (all of them when a run restarts from step 0
    for want of a checkpoint). Each row also goes to ``trackers`` (:class:`divalign.tracking.Trackers`) when
    given.

    Every row goes through a :class:`~divalign.trainers.health.RunWatch`, which stops the run
    (:class:`~divalign.errors.RunFailed`) after ``max_consecutive_skips`` steps in a row without an update; then,
    as when weights are not finite, nothing more is saved: the last good checkpoint stays and no final model is
    written."""
    engine = trainer.engine
    main = engine.world.main  # the process that writes the run's files and shows its progress
    log = MetricsLog(run_dir, resume_step=start_step if resumed else None) if main else None
    watch = RunWatch(max_consecutive_skips, len(trainer.tokenizer), console=main)
    rows = []
    bar = progress(
        None if max_seconds or stop else total_steps, initial=start_step, desc=Path(run_dir).name,
        enabled=show_progress and main,
    )
    started, done = time.perf_counter(), start_step
    try:
        for step in range(start_step, total_steps):
            row = trainer.step(step)
            row["world_size"] = engine.world.size
            try:
                watch.see(row)
            finally:
                if log is not None:
                    log.write(row)
                if trackers is not None:
                    trackers.log(row)
            rows.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.3g}" for k in postfix_keys if k in row}, refresh=False)
            done = step + 1
            if save_every and done % save_every == 0 and done < total_steps:
                check_finite(trainer.policy, done, engine.world)
                state, weights = trainer.state_dict(done), engine.full_state_dict(trainer.policy)
                if main:
                    save_checkpoint(run_dir, done, trainer.policy, trainer.tokenizer, state, keep=keep_checkpoints,
                                    model_state=weights)
                engine.world.barrier()
            if max_seconds is not None and time.perf_counter() - started >= max_seconds:
                break
            if stop is not None and stop():
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
    check_finite(trainer.policy, done, engine.world)
    weights = engine.full_state_dict(trainer.policy)
    if main:
        with atomic_directory(Path(run_dir) / FINAL_MODEL) as tmp:
            save_model(trainer.policy, trainer.tokenizer, tmp, weights)
    engine.world.barrier()
    return rows


def check_finite(model, step: int, world: World | None = None) -> None:
    """Refuse to save weights that are not all finite (:class:`~divalign.errors.RunFailed`)."""
    if not weights_finite(model, world):
        raise RunFailed(f"the model's weights are not finite after step {step}: nothing saved (the last good "
                        "checkpoint is kept; lower the learning rate)")
