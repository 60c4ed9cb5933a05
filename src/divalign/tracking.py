"""What a run reports: one JSON object per step appended to ``metrics.jsonl`` in the run folder, a console progress
bar, and warnings on the console."""

from __future__ import annotations

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
