"""Calibration of a model's confidence on verifiable tasks: expected calibration error and a reliability diagram.

Confidence is the model's own probability of its greedy answer, π(y|x) = Π_t π(y_t | x, y_<t) over the answer's
tokens (end-of-sequence included); correctness comes from the task's verifier. Answers are binned by
confidence into equal-width bins; ECE = Σ_b (n_b / N)·|accuracy_b − mean confidence_b| (Naeini et al. 2015;
Guo et al., arXiv 1706.04599).
"""

from __future__ import annotations

import math
import os

import torch

from divalign.data.prompts import Example
from divalign.generation import make_sampler
from divalign.models import completion_logprobs


def expected_calibration_error(confidences: list[float], correct: list[bool], bins: int = 10) -> tuple[float, list]:
    """ECE and the per-bin (lower edge, upper edge, count, mean confidence, accuracy) rows."""
    rows, total, n = [], 0.0, len(confidences)
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidences) if low <= c < high or (b == bins - 1 and c == 1.0)]
        if not members:
            rows.append((low, high, 0, None, None))
            continue
        conf = sum(confidences[i] for i in members) / len(members)
        acc = sum(correct[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
        rows.append((low, high, len(members), conf, acc))
    return total, rows


@torch.no_grad()
def answer_confidence(model, tokenizer, examples: list[Example], reward_fn, max_new_tokens: int,
                      batch_size: int = 256) -> tuple[list[float], list[bool]]:
    """Greedy answers' sequence probabilities and their correctness under ``reward_fn`` (batch interface)."""
    sampler = make_sampler(model, tokenizer)
    confidences, correct = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        rollout = sampler.generate([tokenizer(ex.prompt)["input_ids"] for ex in chunk], max_new_tokens, greedy=True)
        logp, _ = completion_logprobs(model, rollout.sequences())
        confidences += [math.exp(v) for v in (logp * rollout.completion_mask).sum(-1).tolist()]
        texts = tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)
        rewards = reward_fn([ex.prompt for ex in chunk], texts, [ex.answer for ex in chunk])
        correct += [r >= 1.0 for r in rewards]
    return confidences, correct


def reliability_diagram(rows: list, ece: float, path: str | os.PathLike, title: str = "Reliability") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    width = rows[0][1] - rows[0][0]
    for low, _, count, conf, acc in rows:
        if count:
            ax.bar(low, acc, width=width, align="edge", color="#4c72b0", edgecolor="white", alpha=0.85)
            ax.bar(low, conf - acc, bottom=acc, width=width, align="edge", color="#dd8452", alpha=0.35)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlabel("confidence (probability of the greedy answer)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} — ECE {ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
