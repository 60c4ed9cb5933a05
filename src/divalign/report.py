"""``divalign report RUN_DIR [RUN_DIR …]``: one self-contained HTML page comparing runs.

For every run folder it reads what divalign wrote there — ``config.yaml``, ``metrics.jsonl`` (training curves,
also in the ``sft/`` and ``control/`` sub-runs of a demo), ``summary.json`` (demo) and ``results.json``
(``divalign eval``) — and draws one plot per training metric with all runs overlaid, and tables of the summaries
and evaluation results side by side. Plots are PNG files next to the page and are also embedded in it, so the
page opens from disk without a server and can be moved alone.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from divalign.errors import UserError
from divalign.plots import plot_series
from divalign.tracking import read_metrics

CURVES = ("reward_mean", "kl", "completion_length", "divergence_estimate", "loss", "pass_rate", "entropy",
          "eval_accuracy", "eval_loss", "accuracy")


@dataclass
class ReportConfig:
    """Write an HTML report of one or more run folders."""

    output: str = "report.html"
    """Path of the HTML page; its plots are written to a folder beside it (NAME_files/)."""
    title: str = "divalign report"
    """Title of the page."""


@dataclass
class Run:
    name: str
    path: Path
    curves: dict[str, list[dict]]  #: sub-run label → metrics rows ("" for the run itself)
    summary: dict | None
    results: dict | None
    config: str | None


def load_run(path: str | os.PathLike) -> Run:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run folder '{path}' does not exist")
    curves = {}
    for label, folder in (("", path), ("sft", path / "sft"), ("control", path / "control")):
        rows = read_metrics(folder)
        if rows:
            curves[label] = rows
    summary = _json(path / "summary.json")
    results = _json(path / "results.json")
    config = (path / "config.yaml").read_text() if (path / "config.yaml").exists() else None
    if not curves and summary is None and results is None:
        raise UserError(f"'{path}' holds no divalign run (no metrics.jsonl, summary.json or results.json)")
    return Run(path.name or str(path), path, curves, summary, results, config)


def _json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg})") from None


def _flatten(data, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value)) if value is not None else "—"


def _table(title: str, rows: dict[str, dict]) -> str:
    """Rows: run name → flat mapping; one column per run."""
    keys = sorted({k for flat in rows.values() for k in flat})
    if not keys:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in rows)
    body = "".join(f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{_cell(flat.get(k))}</td>" for flat in
                                                              rows.values()) + "</tr>" for k in keys)
    return f"<h2>{html.escape(title)}</h2><table><tr><th>metric</th>{head}</tr>{body}</table>"


def write_report(run_dirs: list[str], config: ReportConfig) -> Path:
    runs = [load_run(d) for d in run_dirs]
    out = Path(config.output)
    assets = out.parent / f"{out.stem}_files"
    assets.mkdir(parents=True, exist_ok=True)
    figures = []
    for key in CURVES:
        series = {f"{run.name}{'/' + label if label else ''}": rows for run in runs
                  for label, rows in run.curves.items() if any(r.get(key) is not None for r in rows)}
        if series:
            png = plot_series([], key, assets / f"{key}.png", key.replace("_", " "), series=series)
            figures.append((key, png))
    parts = [f"<h1>{html.escape(config.title)}</h1>",
             "<p>Runs: " + ", ".join(f"<code>{html.escape(str(r.path))}</code>" for r in runs) + "</p>"]
    if figures:
        parts.append("<h2>Training curves</h2><div class='plots'>")
        for key, png in figures:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img class='plot' alt='{key}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(key)} — <a href='{assets.name}/{png.name}'>PNG</a>"
                         "</figcaption></figure>")
        parts.append("</div>")
    parts.append(_table("Run summaries", {r.name: _flatten(r.summary) for r in runs if r.summary}))
    parts.append(_table("Evaluation results", {r.name: _flatten(r.results) for r in runs if r.results}))
    parts.append(_table("Last training step", {f"{r.name}{'/' + label if label else ''}": _flatten(rows[-1])
                                              for r in runs for label, rows in r.curves.items()}))
    for run in runs:
        if run.config:
            parts.append(f"<details><summary>config of {html.escape(run.name)}</summary>"
                         f"<pre>{html.escape(run.config)}</pre></details>")
    page = _PAGE.format(title=html.escape(config.title), body="\n".join(p for p in parts if p),
                        figures=len(figures))
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} img.plot {{ max-width: 600px; }}
</style></head>
<body data-figures="{figures}">
{body}
<script>
// Count the plots the browser actually decoded (used by the test that renders this page headless).
function countPlots() {{
  const done = [...document.querySelectorAll("img.plot")].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-plots-rendered", String(done));
}}
window.addEventListener("load", countPlots);
</script>
</body></html>
"""
