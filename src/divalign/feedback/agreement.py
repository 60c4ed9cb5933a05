"""What a preference file says about its raters and, for an A/B study, about the two models: pure functions over
:class:`~divalign.feedback.labels.Label` lists.

- **Agreement** between two raters on the pairs both labelled: the raw share of equal choices and Cohen's κ
  (κ = (p_o − p_e) / (1 − p_e), p_e from each rater's own choice frequencies; Cohen 1960), over the four choices
  A, B, tie, both bad. κ is undefined (reported as null) when both raters gave one and the same choice throughout.
- **Position bias** of a person: among their choices for A or B, the share that went to the side shown on the left
  (0.5 when the side does not matter; the sides are shuffled per pair, so a share far from 0.5 is the rater's
  bias, not the models'), with a 95 % Wilson interval. Of a judge, which sees each pair in both orders: the share
  of pairs whose two verdicts differ (the order decided), and the share of single-order verdicts that went to the
  response shown first.
- **Win rate** of model A over model B for pairs that name both models: wins + ties / 2 over all labels (ties and
  "both bad" count half), with a 95 % Wilson interval — the statistic ``divalign eval`` reports
  (:func:`divalign.eval.metrics.win_rate_from_counts`); people pooled, each judge on its own.

A rater who labelled a pair more than once counts with their last label.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter

from divalign.eval.metrics import wilson_interval, win_rate_from_counts
from divalign.feedback.labels import CHOICES, DECISIVE, Label

PEOPLE = "people"


def latest(labels: list[Label]) -> dict[tuple[str, str], Label]:
    """The last label of each (annotator, pair)."""
    return {(label.annotator, label.pair_id): label for label in labels}


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's κ of two raters' choices on the same items (None where it is undefined: p_e = 1)."""
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the undefined case is reported as None below
        kappa = cohen_kappa_score(first, second, labels=list(CHOICES))
    return None if math.isnan(kappa) else float(kappa)


def agreement(labels: list[Label]) -> list[dict]:
    """For every two raters who share pairs: how many, the raw agreement, and Cohen's κ."""
    last = latest(labels)
    by_rater: dict[str, dict[str, str]] = {}
    for (annotator, pair_id), label in last.items():
        by_rater.setdefault(annotator, {})[pair_id] = label.choice
    rows = []
    for x, y in itertools.combinations(sorted(by_rater), 2):
        shared = sorted(by_rater[x].keys() & by_rater[y].keys())
        if not shared:
            continue
        a, b = [by_rater[x][p] for p in shared], [by_rater[y][p] for p in shared]
        rows.append({"raters": [x, y], "shared_pairs": len(shared),
                     "agreement": sum(u == v for u, v in zip(a, b)) / len(shared), "kappa": cohen_kappa(a, b)})
    return rows


def _left_share(labels: list[Label]) -> dict:
    decided = [label for label in labels if label.choice in DECISIVE and label.left is not None]
    left = sum(label.choice == label.left for label in decided)
    low, high = wilson_interval(left, len(decided))
    return {"decisive": len(decided), "left_share": left / len(decided) if decided else None,
            "left_share_ci95": [low, high]}


def _judge_bias(labels: list[Label]) -> dict:
    judged = [label for label in labels if label.orders is not None]
    # with A first, verdict "a" is the first slot; with B first, verdict "b" is
    first = sum((a_first == "a") + (b_first == "b") for a_first, b_first in (label.orders for label in judged))
    return {"pairs": len(judged),
            "order_disagreement": sum(a != b for a, b in (label.orders for label in judged)) / len(judged)
            if judged else None,
            "first_position_share": first / (2 * len(judged)) if judged else None}


def position_bias(labels: list[Label]) -> dict:
    """Each rater's position bias (see the module docstring); people also pooled."""
    last = list(latest(labels).values())
    out = {}
    people = [label for label in last if label.source == "human"]
    for annotator in sorted({label.annotator for label in last}):
        mine = [label for label in last if label.annotator == annotator]
        out[annotator] = _judge_bias(mine) if mine[0].source == "judge" else _left_share(mine)
    if len({label.annotator for label in people}) > 1:
        out[PEOPLE] = _left_share(people)
    return out


def ab_win_rates(labels: list[Label]) -> list[dict]:
    """Win rate of model A over model B for every (model A, model B, rater group) with labels."""
    groups: dict[tuple[str, str, str], Counter] = {}
    for label in latest(labels).values():
        if not (label.model_a and label.model_b) or label.model_a == label.model_b:
            continue  # not an A/B study (one model's two samples)
        rater = PEOPLE if label.source == "human" else label.annotator
        groups.setdefault((label.model_a, label.model_b, rater), Counter())[label.choice] += 1
    return [{"model_a": a, "model_b": b, "raters": rater,
             **win_rate_from_counts(counts["a"], counts["tie"] + counts["both_bad"], counts["b"])}
            for (a, b, rater), counts in sorted(groups.items())]


def summary(labels: list[Label], pair_ids: list[str]) -> dict:
    """Everything the summary page shows, for the labels of a file and the pairs being labelled."""
    last = latest(labels)
    wanted = set(pair_ids)
    raters = {}
    for (annotator, pair_id), label in sorted(last.items()):
        row = raters.setdefault(annotator, {"source": label.source, "labelled": 0, "of_these_pairs": 0,
                                            "choices": dict.fromkeys(CHOICES, 0)})
        row["labelled"] += 1
        row["of_these_pairs"] += pair_id in wanted
        row["choices"][label.choice] += 1
    return {"pairs": len(pair_ids), "labels": len(labels), "raters": raters, "agreement": agreement(labels),
            "position_bias": position_bias(labels), "win_rates": ab_win_rates(labels)}
