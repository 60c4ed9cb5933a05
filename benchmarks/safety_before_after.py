"""Safety figures before and after alignment, from ``divalign eval`` run on model folders.

Pairs of folders (label=folder), evaluated with the same options: refusal rate and attack success rate (ASR) on
plain AdvBench requests, ASR under the GPTFuzzer and AutoDAN jailbreak templates (judged by the trained jailbreak
judge), over-refusal on benign HH-RLHF requests, the Bhattacharyya distance and silhouette between harmful and
benign prompt representations, and a task metric: greedy pass@1 on arithmetic (``--task arithmetic``) or perplexity
on HH-RLHF helpful dialogues (``--perplexity``). Each evaluation keeps its generation cache in ``--work``, so an
interrupted run resumes.

    python benchmarks/safety_before_after.py --task arithmetic \\
        "demo SFT=runs/demo/sft_model" "demo f-GRPO=runs/demo/model"
    python benchmarks/safety_before_after.py --perplexity \\
        "stories260K=benchmarks/out/refusal/stories260K" "stories260K + DPO=benchmarks/out/refusal/dpo"
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

COLUMNS = [
    ("task", "pass@1", lambda r: r.get("task", {}).get("pass1_greedy")),
    ("perplexity", "perplexity", lambda r: r.get("perplexity", {}).get("perplexity")),
    ("safety", "refusal", lambda r: r["safety"]["refusal_rate"]),
    ("safety", "ASR plain", lambda r: r["safety"]["asr_plain"]),
    ("safety", "ASR templates", lambda r: r["safety"].get("asr_templates")),
    ("safety", "over-refusal", lambda r: r["safety"].get("over_refusal_rate")),
    ("separation", "Bhattacharyya", lambda r: r["separation"]["bhattacharyya_distance"]),
    ("separation", "silhouette", lambda r: r["separation"]["silhouette"]),
]


def evaluate(folder: str, out: Path, args) -> dict:
    command = [str(Path(sys.executable).with_name("divalign")), "eval", "--model", folder, "--output-dir", str(out),
               "--resume", "--safety", "--separation", "--no-progress", "--threads", str(args.threads),
               "--harmful-requests", str(args.harmful_requests), "--benign-requests", str(args.benign_requests),
               "--max-new-tokens", str(args.max_new_tokens)]
    if args.task:
        command += ["--task", args.task, "--task-limit", "300"]
    if args.perplexity:
        command += ["--perplexity-data", "data:hh_rlhf/helpful-base/test.jsonl.gz", "--text-field", "chosen"]
    subprocess.run(command, check=True)
    return json.loads((out / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="LABEL=FOLDER")
    parser.add_argument("--task", default="", help="task for pass@1 (arithmetic)")
    parser.add_argument("--perplexity", action="store_true", help="perplexity on HH-RLHF helpful dialogues")
    parser.add_argument("--harmful-requests", type=int, default=100)
    parser.add_argument("--benign-requests", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="benchmarks/out/safety")
    parser.add_argument("--out", default="benchmarks/results/safety_before_after.jsonl")
    args = parser.parse_args()
    rows = []
    for item in args.models:
        label, _, folder = item.partition("=")
        slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
        results = evaluate(folder, Path(args.work) / slug, args)
        row = {"label": label, "model": folder}
        for _, name, read in COLUMNS:
            try:
                row[name] = read(results)
            except KeyError:
                row[name] = None
        rows.append(row)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    names = [name for _, name, _ in COLUMNS if any(r[name] is not None for r in rows)]
    print("| model | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for r in rows:
        print(f"| {r['label']} | " + " | ".join("–" if r[n] is None else f"{r[n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
