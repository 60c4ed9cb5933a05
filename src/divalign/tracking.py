"""What a run reports: one JSON object per step appended to ``metrics.jsonl`` in the run folder (always), the same
numbers to experiment trackers when asked (:class:`Trackers`: TensorBoard, Weights & Biases, trackio, MLflow), a
console progress bar, and warnings on the console."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    return value


class MetricsLog:
    """Append-only JSONL log. On resume it first drops rows beyond the checkpoint step (atomically)."""

    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the run; closed by close())

    def write(self, row: dict) -> None:
        self._handle.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True):
    return tqdm(
        total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False
    )


def warn(message: str) -> None:
    """One warning line on the console (stderr)."""
    print(f"divalign: warning: {message}", file=sys.stderr)


#: Trackers ``--report-to`` accepts, with the package each needs (an optional extra: ``pip install divalign[NAME]``).
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
TENSORBOARD_DIR = "tensorboard"


def tracker_names(report_to: str) -> list[str]:
    """The trackers of ``--report-to`` (comma-separated; ``none`` or empty for none); ValueError naming an unknown
    one or one whose package is not installed."""
    names = [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker '{name}' (expected none or any of {', '.join(TRACKERS)})")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ValueError(f"report_to: {name} needs the {TRACKERS[name]} package (pip install "
                             f"'divalign[{name}]' -c constraints.txt)")
    return names


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step"}


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Trackers:
    """The run's numbers sent to each tracker of ``names``: the config once, then every step's row (its numeric
    values, keyed by step). Offline use follows each library's own settings: TensorBoard writes event files into
    the run folder; ``WANDB_MODE=offline`` keeps Weights & Biases runs on disk; MLflow writes to ``./mlruns`` unless
    ``MLFLOW_TRACKING_URI`` says otherwise; trackio keeps a local database."""

    def __init__(self, names: list[str], run_dir: str | os.PathLike, config: dict):
        self.sinks = []
        run_dir = Path(run_dir)
        name = run_dir.name
        for tracker in names:
            if tracker == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
                writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")
                self.sinks.append((lambda row, step, w=writer: [w.add_scalar(k, v, step)
                                                                 for k, v in _numbers(row).items()],
                                   writer.close))
            elif tracker == "wandb":
                import wandb

                run = wandb.init(project=os.environ.get("WANDB_PROJECT", "divalign"), name=name, config=config,
                                 dir=str(run_dir))
                self.sinks.append((lambda row, step, r=run: r.log(_numbers(row), step=step), run.finish))
            elif tracker == "trackio":
                import trackio

                trackio.init(project=os.environ.get("TRACKIO_PROJECT", "divalign"), name=name, config=config)
                self.sinks.append((lambda row, step: trackio.log(_numbers(row), step=step), trackio.finish))
            elif tracker == "mlflow":
                import mlflow

                mlflow.start_run(run_name=name)
                mlflow.log_params({k: str(v)[:500] for k, v in _flat(config).items()})
                self.sinks.append((lambda row, step: mlflow.log_metrics(_numbers(row), step=step), mlflow.end_run))

    def log(self, row: dict) -> None:
        for log, _ in self.sinks:
            log(row, int(row.get("step", 0)))

    def close(self) -> None:
        for _, close in self.sinks:
            close()
