"""Peak resident memory of ``divalign rl`` with LoRA adapters against full fine-tuning, on a randomly initialised
Llama large enough that the weights, not the interpreter, dominate (defaults: hidden 1024, MLP 2816, 8 layers,
16 heads / 4 KV heads, character vocabulary: about 92M parameters, 370 MB in fp32).

Each setting is one ``divalign rl`` process (GRPO, 4 prompts × 4 completions, 16 new tokens, 3 steps); its peak
resident set size comes from the operating system when it exits (``wait4``'s ``ru_maxrss``), so nothing of one
setting stays in the next. Settings alternate over the repeats; the median is reported.

Full fine-tuning holds the policy, its gradients, AdamW's two moments and a frozen reference copy; with LoRA the
reference is the same base with the adapters off, and only the adapters have gradients and optimizer state.

    python benchmarks/lora_memory.py [--repeats 2] [--hidden 1024 --layers 8 --mlp 2816]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SETTINGS = {"full fine-tuning": [], "LoRA r=8": ["--lora.r", "8"], "LoRA r=64": ["--lora.r", "64"]}


def peak_rss_mib(argv: list[str], cwd: str) -> tuple[float, float]:
    """Peak resident memory (MiB) and seconds of one process running ``argv``."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{process.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--mlp", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from divalign.charlm import write_tiny_model
    from divalign.models import load_causal_lm, param_count

    work = tempfile.mkdtemp(prefix="lora-memory-")
    model = write_tiny_model(os.path.join(work, "model"), hidden_size=args.hidden, intermediate_size=args.mlp,
                             num_layers=args.layers, num_heads=16, num_kv_heads=4, max_positions=128)
    parameters = param_count(load_causal_lm(model)[0])
    common = [sys.executable, "-m", "divalign", "rl", "--model", model, "--task", "arithmetic", "--reward",
              "numeric", "--objective", "grpo", "--prompts-per-step", "4", "--num-generations", "4",
              "--max-new-tokens", "16", "--steps", "3", "--no-progress", "--threads", str(args.threads),
              "--no-fast-path"]  # the same (Hugging Face) forward on both sides: adapters take it anyway
    peaks: dict[str, list[float]] = {name: [] for name in SETTINGS}
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    trainable: dict[str, int] = {}
    for repeat in range(args.repeats):
        for name, extra in SETTINGS.items():
            out = os.path.join(work, f"run-{repeat}-{len(peaks[name])}-{name.split()[-1]}")
            peak, took = peak_rss_mib([*common, *extra, "--output-dir", out], work)
            peaks[name].append(peak)
            seconds[name].append(took)
            adapter = Path(out) / "model" / "adapter_model.safetensors"
            if adapter.exists():
                from safetensors.torch import load_file

                trainable[name] = sum(t.numel() for t in load_file(adapter).values())
            else:
                trainable[name] = parameters
            print(f"{name}: {peak:.0f} MiB, {took:.1f} s", flush=True)
    result = {"benchmark": "lora_memory", "date": time.strftime("%Y-%m-%d"), "parameters": parameters,
              "shape": {"hidden": args.hidden, "mlp": args.mlp, "layers": args.layers, "heads": 16, "kv_heads": 4},
              "threads": args.threads, "repeats": args.repeats,
              "settings": {name: {"peak_rss_mib": statistics.median(peaks[name]), "all_mib": peaks[name],
                                  "seconds": statistics.median(seconds[name]), "trainable": trainable[name]}
                           for name in SETTINGS}}
    full = result["settings"]["full fine-tuning"]["peak_rss_mib"]
    for name, row in result["settings"].items():
        print(f"{name:18s} trainable {row['trainable']:>11,}  peak {row['peak_rss_mib']:7.0f} MiB "
              f"({row['peak_rss_mib'] / full:.2f}× full)  {row['seconds']:.1f} s")
    with open(ROOT / "results" / "lora_memory.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
