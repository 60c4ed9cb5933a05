"""divalign's GRPO step of ``grpo_speed.py`` timed alone (no TRL in the process): the median of each phase.

Alone, the step runs with warm caches (interleaved with TRL it takes 1–3 ms more), so this is the command for
comparing two versions of divalign: run it alternately from the two checkouts, several times, since the machine's
speed drifts by 10 % within minutes.

    python benchmarks/grpo_profile.py --steps 150
    PYTHONPATH=/path/to/other/checkout/src python benchmarks/grpo_profile.py --steps 150
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from common import add_process_options, apply_process_options, speed_model
from grpo_speed import divalign_trainer, make_prompts

PHASES = ("generate_s", "score_s", "reference_s", "forward_backward_s", "optimizer_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    add_process_options(parser)
    args = parser.parse_args()
    process = apply_process_options(args)

    folder = speed_model(tempfile.mkdtemp(prefix="grpo-profile-"))
    trainer = divalign_trainer(folder, make_prompts(), args.warmup + args.steps)
    for step in range(args.warmup):
        trainer.step(step)
    rows, walls = [], []
    for step in range(args.warmup, args.warmup + args.steps):
        start = time.perf_counter()
        rows.append(trainer.step(step))
        walls.append(time.perf_counter() - start)
    result = {
        "benchmark": "grpo_step_profile", **process, "steps_measured": args.steps,
        "step_ms": round(1000 * statistics.median(walls), 2),
        "phases_ms": {key: round(1000 * statistics.median(r[key] for r in rows), 2) for key in PHASES},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
