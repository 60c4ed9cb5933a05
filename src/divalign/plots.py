"""PNG plots of metrics over steps (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_series(
    rows: list[dict],
    key: str,
    path: str | os.PathLike,
    title: str | None = None,
    series: dict[str, list[dict]] | None = None,
) -> Path:
    """Plot ``key`` against ``step`` for one run (``rows``) or several (``series``: label → rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = series or {key: rows}
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for label, data in series.items():
        points = [(r["step"], r[key]) for r in data if r.get(key) is not None]
        if not points:
            continue
        xs, ys = zip(*points)
        window = max(1, len(ys) // 40)
        if window > 1:  # raw values faint, a moving average on top
            (line,) = ax.plot(xs, ys, linewidth=0.6, alpha=0.3)
            smooth = [
                sum(ys[max(0, i - window + 1) : i + 1]) / len(ys[max(0, i - window + 1) : i + 1])
                for i in range(len(ys))
            ]
            ax.plot(xs, smooth, color=line.get_color(), linewidth=1.6, label=f"{label} (mean of {window})")
        else:
            ax.plot(xs, ys, linewidth=1.2, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
