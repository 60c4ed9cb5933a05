"""Milliseconds of the output head's node (:mod:`divalign.models.llama.head`): this checkout's against another's,
interleaved in one process.

Times ``token_logprobs`` at one shape (rows of hidden states × vocabulary × hidden), as a training pass (forward
and backward, with or without the entropy) and as a pass without gradient (the reference's), loading the head module
of ``--against`` (a checkout's root, e.g. a ``git worktree`` of an older commit) next to this one's; the two
alternate call by call, so drifts in machine speed hit both alike. Both must give the same log-probabilities (checked
first). Default shapes: the GRPO step of realistic_speed.py (2,048 completion tokens, 32,000 words, hidden 512, with
the entropy) and its DPO step (1,016 response tokens, no entropy).

    git worktree add /tmp/before <commit>
    python benchmarks/head_speed.py --against /tmp/before
    python benchmarks/head_speed.py --against /tmp/before --rows 1016 --no-entropy

Writes a JSON line to stdout: the median milliseconds of each pass on each side and their ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

import torch

from divalign.allocator import keep_freed_memory
from divalign.models.llama import head


def load_head(checkout: str):
    """The head module of another checkout, imported under a name of its own (it imports the rest from here)."""
    path = os.path.join(checkout, "src", "divalign", "models", "llama", "head.py")
    spec = importlib.util.spec_from_file_location("divalign_head_against", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="root of the checkout to compare with")
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--entropy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    torch.manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, requires_grad=True)
    weight = (0.02 * torch.randn(args.vocab, args.hidden)).requires_grad_()
    gain = torch.ones(args.hidden, requires_grad=True)
    index, tokens = torch.arange(args.rows), torch.randint(0, args.vocab, (args.rows,))
    sides = {"this": head, "against": load_head(args.against)}

    def training(module):
        logp, _ = module.token_logprobs(hidden, index, tokens, gain, weight, 1e-6, 1.0, args.entropy)
        logp.sum().backward()
        return logp.detach()

    def reference(module):
        with torch.no_grad():
            return module.token_logprobs(hidden, index, tokens, gain, weight, 1e-6, 1.0, args.entropy)[0]

    passes = {"training": training, "reference": reference}
    for run in passes.values():
        torch.testing.assert_close(run(sides["this"]), run(sides["against"]))
    times = {(side, name): [] for side in sides for name in passes}
    for i in range(args.repeats):
        for side in (("this", "against") if i % 2 == 0 else ("against", "this")):
            for name, run in passes.items():
                start = time.perf_counter()
                run(sides[side])
                times[side, name].append(time.perf_counter() - start)
    ms = {f"{name}_{side}_ms": round(1000 * statistics.median(times[side, name]), 1)
          for side in sides for name in passes}
    ratios = {f"{name}_ratio": round(statistics.median(times["this", name]) / statistics.median(
        times["against", name]), 3) for name in passes}
    print(json.dumps({"benchmark": "head_speed", "rows": args.rows, "vocab": args.vocab, "hidden": args.hidden,
                      "entropy": args.entropy, "threads": args.threads, "against": args.against, **ms, **ratios}))


if __name__ == "__main__":
    main()
