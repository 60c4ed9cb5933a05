"""Scaling curves of a GRPO step: seconds and peak memory against completion length, group size and model size,
divalign and TRL, each point next to its arithmetic floor.

One axis moves at a time around the centre (the 57M-parameter shape of realistic_speed.py, 4 prompts × 8
completions, 64 new tokens, 32-token prompts): completion length 16, 64, 256; group size 4, 8, 16; model size
``tiny`` (0.51M), ``default`` (57M), ``deep`` (135M). Each point is ``realistic_speed.py --algo grpo --memory``: TRL
alone, then divalign alone, each in a process of its own, giving the median step time after a warm-up step and
the peak resident memory of the whole process (Python, libraries and model included).

The floor of a point is the time this machine needs for the step's arithmetic at its measured rates (one large
fp32 matrix product for the compute rate, one large copy for the memory bandwidth, both with the benchmark's
threads), counting what the algorithm itself needs, with each prompt run once per group (divalign's layout; TRL
runs it once per completion):

* generation: the prompts once, then one decoding step per new token for every completion (the linear layers,
  the output head for each new token, and attention, 4·hidden·context per token and layer); as decoding one token
  for 32 rows reads every weight once, generation's floor is the larger of its products' time and the time to
  stream the weights once per new token;
* training: the policy's forward and backward (3× a forward) and the reference's forward (1×) over the prompts and
  completions, the output head at each position that predicts a completion token.

Completions are taken at their full budget (a random model rarely samples </s> from a large vocabulary; the
points' mean completion lengths are in the JSON lines). The memory floor is what training state needs at the
least: the policy's weights, gradients and two Adam moments and the reference's weights, 20 bytes per parameter.

    python benchmarks/scaling.py                 # runs the points missing from --out, then prints the table
    python benchmarks/scaling.py --table-only    # the table and plot from --out alone
    python benchmarks/scaling.py --rerun         # every point again

Writes one JSON line per point (and one of the machine's rates) to --out, the markdown table to stdout and the
plot to --plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
from realistic_speed import PROMPTS_PER_STEP

CENTRE = {"shape": "default", "new_tokens": 64, "group_size": 8}
AXES = {
    "completion length": ("new_tokens", (16, 64, 256)),
    "group size": ("group_size", (4, 8, 16)),
    "model size": ("shape", ("tiny", "default", "deep")),
}
PROMPT_TOKENS = 32
STATE_BYTES_PER_PARAMETER = 4 * 4 + 4  # policy: weights, gradients, two Adam moments; reference: weights


def points() -> list[dict]:
    """Every distinct point of :data:`AXES`, the centre once."""
    out: dict[tuple, dict] = {}
    for key, values in AXES.values():
        for value in values:
            point = {**CENTRE, key: value}
            out.setdefault(tuple(point.values()), point)
    return list(out.values())


def key_of(row: dict) -> tuple:
    return row["shape"]["preset"], row["new_tokens"], row["group_size"]


def row_at(rows: list[dict], key: str, value) -> dict | None:
    """The measured row of the point that moves ``key`` of :data:`CENTRE` to ``value``, if any."""
    point = tuple({**CENTRE, key: value}.values())
    return next((r for r in rows if key_of(r) == point), None)


# ---------------------------------------------------------------------------------------------------- arithmetic
def step_arithmetic(dims: dict, group_size: int, new_tokens: int, prompts: int = PROMPTS_PER_STEP,
                    prompt_tokens: int = PROMPT_TOKENS) -> dict:
    """FLOPs of generation and of training for one GRPO step, and the bytes generation must stream (see the module
    docstring). A multiply-add counts 2 FLOPs."""
    hidden, layers, vocab = dims["hidden"], dims["layers"], dims["vocab"]
    head_dim = hidden // dims["heads"]
    per_layer = (hidden * dims["heads"] * head_dim * 2 + hidden * dims["kv_heads"] * head_dim * 2
                 + 3 * hidden * dims["intermediate"])  # q and o, k and v, gate, up and down
    rows, p, c = prompts * group_size, prompt_tokens, new_tokens
    context = prompts * p * (p + 1) // 2 + rows * sum(p + t for t in range(1, c))  # keys each token attends to
    attention = 4 * hidden * layers * context
    head = 2 * hidden * vocab * rows * c
    tokens = prompts * p + rows * (c - 1)  # the last new token is sampled, never fed back
    forward = 2 * layers * per_layer * tokens + head + attention
    return {"generation_flops": forward, "training_flops": 4 * forward,
            "generation_bytes": (c - 1) * 4 * (layers * per_layer + vocab * hidden)}


def machine_rates(threads: int) -> dict:
    """This machine's fp32 matrix-product rate (GFLOP/s, best of 5 products of 2048×4096 by 4096×2048) and memory
    bandwidth (GB/s read plus written, best of 5 copies of 512 MiB), with ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 4096), torch.randn(4096, 2048)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    gflops = 2 * 2048 * 4096 * 2048 / best / 1e9
    src = torch.ones(128 * 2**20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return {"benchmark": "machine_rates", "threads": threads, "gemm_gflops": gflops,
            "copy_gbps": 2 * src.numel() * 4 / best / 1e9, "date": time.strftime("%Y-%m-%d")}


def floor_seconds(row: dict, rates: dict) -> dict:
    work = step_arithmetic(row["shape"], row["group_size"], row["new_tokens"])
    compute = rates["gemm_gflops"] * 1e9
    generation = max(work["generation_flops"] / compute, work["generation_bytes"] / (rates["copy_gbps"] * 1e9))
    training = work["training_flops"] / compute
    return {"generation": generation, "training": training, "step": generation + training}


# ------------------------------------------------------------------------------------------------------- running
def run_point(point: dict, args) -> dict:
    steps, warmup = (12, 2) if point["shape"] == "tiny" else (args.steps, 1)
    argv = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "realistic_speed.py"),
            "--algo", "grpo", "--memory", "--shape", point["shape"], "--new-tokens", str(point["new_tokens"]),
            "--group-size", str(point["group_size"]), "--prompt-tokens", str(PROMPT_TOKENS), "--steps", str(steps),
            "--warmup", str(warmup), "--threads", str(args.threads)]
    print(f"{point}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ------------------------------------------------------------------------------------------------------ reporting
def table(rows: list[dict], rates: dict) -> str:
    lines = [(f"Machine: fp32 products {rates['gemm_gflops']:.0f} GFLOP/s, copies {rates['copy_gbps']:.1f} GB/s "
             f"({rates['threads']} threads, {rates['date']})."), "",
             ("| axis | parameters | new tokens | group | TRL s | divalign s | ratio | floor s | divalign / floor | "
             "divalign generation / training s | TRL MiB | divalign MiB | state floor MiB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for axis, (key, values) in AXES.items():
        for value in values:
            row = row_at(rows, key, value)
            if row is None:
                continue
            floor = floor_seconds(row, rates)
            trl, ours = (row["step_ms_median"][side] / 1000 for side in ("trl", "divalign"))
            parts = row.get("divalign_parts_ms", {})
            training = (parts.get("forward_backward_s", 0) + parts.get("optimizer_s", 0)) / 1000
            lines.append(
                f"| {axis} | {row['parameters'] / 1e6:.2f}M | {row['new_tokens']} | {row['group_size']} | "
                f"{trl:.2f} | {ours:.2f} | {ours / trl:.2f} | {floor['step']:.2f} | {ours / floor['step']:.1f}× | "
                f"{parts.get('generate_s', 0) / 1000:.2f} / {training:.2f} (floor {floor['generation']:.2f} / "
                f"{floor['training']:.2f}) | {row['peak_rss_mib']['trl']:,.0f} | "
                f"{row['peak_rss_mib']['divalign']:,.0f} | "
                f"{STATE_BYTES_PER_PARAMETER * row['parameters'] / 2**20:,.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], rates: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(AXES), figsize=(12, 6.5), dpi=110)
    for column, (axis, (key, values)) in enumerate(AXES.items()):
        chosen = [r for r in (row_at(rows, key, v) for v in values) if r is not None]
        if not chosen:
            continue
        xs = [r["parameters"] / 1e6 if key == "shape" else r[key] for r in chosen]
        seconds, memory = axes[0][column], axes[1][column]
        for side, style in (("trl", "o-"), ("divalign", "s-")):
            seconds.plot(xs, [r["step_ms_median"][side] / 1000 for r in chosen], style, label=side)
            memory.plot(xs, [r["peak_rss_mib"][side] for r in chosen], style, label=side)
        seconds.plot(xs, [floor_seconds(r, rates)["step"] for r in chosen], "k--", label="arithmetic floor")
        memory.plot(xs, [STATE_BYTES_PER_PARAMETER * r["parameters"] / 2**20 for r in chosen], "k--",
                    label="training state")
        label = "parameters (M)" if key == "shape" else axis
        for ax, unit in ((seconds, "seconds per step"), (memory, "peak resident MiB")):
            ax.set_xscale("log", base=2 if key != "shape" else 10)
            ax.set_yscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(unit)
            ax.grid(True, which="both", alpha=0.3)
        seconds.set_title(f"GRPO step against {axis}")
    axes[0][0].legend()
    axes[1][0].legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "results", "scaling.jsonl"))
    parser.add_argument("--plot", default=os.path.join(here, "..", "docs", "images", "scaling.png"))
    parser.add_argument("--steps", type=int, default=3, help="steps per side and point, the first a warm-up "
                                                             "(the tiny model runs 12, 2 of them warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rerun", action="store_true", help="run every point again")
    parser.add_argument("--table-only", action="store_true", help="only the table and plot, from --out")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first is a warm-up)")

    rows = read_rows(args.out)
    if not args.table_only:
        rates = machine_rates(args.threads)
        rows.append(rates)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(rates) + "\n")
        done = set() if args.rerun else {key_of(r) for r in rows if r.get("benchmark") == "realistic_memory"}
        for point in points():
            if (point["shape"], point["new_tokens"], point["group_size"]) in done:
                continue
            row = run_point(point, args)
            rows.append(row)
            with open(args.out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
    rates = [r for r in rows if r.get("benchmark") == "machine_rates"]
    if not rates:
        raise SystemExit(f"{args.out} holds no machine rates: run without --table-only first")
    measured = {}
    for row in rows:  # the latest line of each point
        if row.get("benchmark") == "realistic_memory":
            measured[key_of(row)] = row
    print(table(list(measured.values()), rates[-1]))
    plot(list(measured.values()), rates[-1], args.plot)
    print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
