"""PNG plots of metrics over steps (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_series(rows: list[dict], key: str, path: str | os.PathLike, title: str | None = None,
                series: dict[str, list[dict]] | None = None) -> Path:
    """Plot ``key`` against ``step`` for one run (``rows``) or several (``series``: label → rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = series or {key: rows}
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for label, data in series.items():
        points = [(r["step"], r[key]) for r in data if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
