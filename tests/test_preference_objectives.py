"""Pairwise and unpaired preference objectives: hand values, identities between them, and behaviour."""

import math

import pytest
import torch

from divalign import divergences, objectives
from divalign.objectives import PairBatch, UnpairedBatch

CHOSEN = [-3.0, -5.0, -2.5]
REJECTED = [-4.0, -4.5, -6.0]
REF_CHOSEN = [-3.5, -5.5, -2.0]
REF_REJECTED = [-3.8, -4.0, -6.5]
LEN_C, LEN_R = [3, 5, 2], [4, 2, 6]


def pair_batch(requires_grad=False):
    chosen = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=requires_grad)
    rejected = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=requires_grad)
    return PairBatch(
        chosen,
        rejected,
        torch.tensor(REF_CHOSEN, dtype=torch.float64),
        torch.tensor(REF_REJECTED, dtype=torch.float64),
        torch.tensor(LEN_C, dtype=torch.float64),
        torch.tensor(LEN_R, dtype=torch.float64),
        num_pairs=3,
    )


def run(name, batch, state=None, **options):
    obj = objectives.get(name)
    opts = obj.make_options(options)
    if obj.family == "unpaired":
        return obj.loss(batch, opts, state or {})
    return obj.loss(batch, opts)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def deltas():
    dc = [c - rc for c, rc in zip(CHOSEN, REF_CHOSEN)]
    dr = [r - rr for r, rr in zip(REJECTED, REF_REJECTED)]
    return dc, dr


def test_dpo_and_ipo_hand_values():
    dc, dr = deltas()
    beta = 0.3
    expected = sum(-log_sigmoid(beta * (a - b)) for a, b in zip(dc, dr)) / 3
    loss, metrics = run("dpo", pair_batch(), beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["reward_accuracy"] == pytest.approx(sum((a - b) > 0 for a, b in zip(dc, dr)) / 3)
    h = [a / lc - b / lr for a, b, lc, lr in zip(dc, dr, LEN_C, LEN_R)]
    loss, _ = run("ipo", pair_batch(), beta=beta)
    assert loss.item() == pytest.approx(sum((x - 1 / (2 * beta)) ** 2 for x in h) / 3, abs=1e-12)
    eps = 0.2
    smoothed = (
        sum(-(1 - eps) * log_sigmoid(beta * (a - b)) - eps * log_sigmoid(-beta * (a - b)) for a, b in zip(dc, dr)) / 3
    )
    assert run("dpo", pair_batch(), beta=beta, label_smoothing=eps)[0].item() == pytest.approx(smoothed, abs=1e-12)


@pytest.mark.parametrize(
    "regularizer,f_prime",
    [
        ("reverse_kl", lambda u: math.log(u) + 1),  # f = u ln u
        ("forward_kl", lambda u: -1 / u),  # f = −ln u
        ("js", lambda u: math.log(2 * u / (1 + u))),
        ("alpha", lambda u: (u ** (0.3 - 1) - 1) / (0.3 - 1)),
    ],
)
def test_fdpo_hand_values(regularizer, f_prime):
    dc, dr = deltas()
    beta = 0.5
    expected = sum(-log_sigmoid(beta * (f_prime(math.exp(a)) - f_prime(math.exp(b)))) for a, b in zip(dc, dr)) / 3
    loss, _ = run("fdpo", pair_batch(), regularizer=regularizer, alpha=0.3, beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_fdpo_with_reverse_kl_is_dpo_in_value_and_gradient():
    a, b = pair_batch(True), pair_batch(True)
    la, _ = run("fdpo", a, regularizer="reverse_kl", beta=0.2)
    lb, _ = run("dpo", b, beta=0.2)
    assert la.item() == pytest.approx(lb.item(), abs=1e-12)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.chosen_logps.grad, b.chosen_logps.grad)
    torch.testing.assert_close(a.rejected_logps.grad, b.rejected_logps.grad)


@pytest.mark.parametrize("divergence", ["alpha", "js", "hellinger", "jeffreys"])
def test_fpo_hand_values(divergence):
    dc, dr = deltas()
    beta, alpha = 0.7, 0.4
    target = [1 / (1 + math.exp(-10)), math.exp(-10) / (1 + math.exp(-10))]
    total = 0.0
    for a, b in zip(dc, dr):
        za, zb = beta * a, beta * b
        q = [1 / (1 + math.exp(zb - za)), 1 / (1 + math.exp(za - zb))]
        if divergence == "alpha":
            total += sum(p * ((qi / p) ** (1 - alpha) - (1 - alpha) * qi / p - alpha) for qi, p in zip(q, target)) / (
                alpha * (alpha - 1)
            )
        elif divergence == "js":
            m = [(qi + p) / 2 for qi, p in zip(q, target)]
            total += 0.5 * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m)) + 0.5 * sum(
                p * math.log(p / mi) for p, mi in zip(target, m)
            )
        elif divergence == "hellinger":
            total += sum((math.sqrt(qi) - math.sqrt(p)) ** 2 for qi, p in zip(q, target))
        else:
            total += sum((qi - p) * (math.log(qi) - math.log(p)) for qi, p in zip(q, target))
    loss, _ = run("fpo", pair_batch(), divergence=divergence, alpha=alpha, beta=beta)
    assert loss.item() == pytest.approx(total / 3, rel=1e-9)


def test_fpo_alpha_near_one_ranks_like_dpo():
    """α → 1 gives KL(p ‖ q): a step lowers the loss by raising chosen over rejected, as DPO does."""
    b = pair_batch(True)
    loss, _ = run("fpo", b, divergence="alpha", alpha=0.999, beta=1.0)
    loss.backward()
    assert (b.chosen_logps.grad < 0).all() and (b.rejected_logps.grad > 0).all()


# --------------------------------------------------------------------------- unpaired


def unpaired_batch(requires_grad=False, kl=False):
    logps = torch.tensor([-2.0, -3.0, -1.0, -4.0, -2.5], dtype=torch.float64, requires_grad=requires_grad)
    ref = torch.tensor([-2.5, -2.0, -1.5, -3.0, -3.5], dtype=torch.float64)
    desirable = torch.tensor([True, True, False, False, False])
    extra = {}
    if kl:
        extra = {
            "kl_logps": torch.tensor([-5.0, -4.0], dtype=torch.float64),
            "ref_kl_logps": torch.tensor([-5.6, -4.2], dtype=torch.float64),
        }
    return UnpairedBatch(logps, ref, desirable, num_desirable=2, num_undesirable=3, **extra)


def ratios(beta):
    return [beta * (a - b) for a, b in zip([-2.0, -3.0, -1.0, -4.0, -2.5], [-2.5, -2.0, -1.5, -3.0, -3.5])]


def test_fdo_hellinger_equals_the_hdo_form():
    beta = 0.4
    r = ratios(beta)
    hdo = sum(math.exp(-x / 2) for x in r[:2]) / 2 + sum(math.exp(x / 2) for x in r[2:]) / 3
    for options in ({"preset": "hdo"}, {"divergence": "hellinger"}):
        loss, metrics = run("fdo", unpaired_batch(), beta=beta, **options)
        # Canonical pieces: −g = e^(−r/2) − 1 and f*∘g = e^(r/2) − 1, so the loss is the HDO form minus 2.
        assert loss.item() == pytest.approx(hdo - 2.0, abs=1e-12)
        assert metrics["divergence_estimate"] == pytest.approx(2.0 - hdo, abs=1e-12)


# research/algorithms.md §1.2, canonical-link per-sample pieces up to constants.
TABLE = {
    "kl": (lambda r: -r, lambda r: math.exp(r)),
    "reverse_kl": (lambda r: math.exp(-r), lambda r: r),
    "pearson": (lambda r: -2 * math.exp(r), lambda r: math.exp(2 * r)),
    "hellinger": (lambda r: math.exp(-r / 2), lambda r: math.exp(r / 2)),
    "js": (lambda r: math.log1p(math.exp(-r)), lambda r: math.log1p(math.exp(r))),
    "tv": (lambda r: -1 / (1 + math.exp(-r)), lambda r: 1 / (1 + math.exp(-r))),
}


@pytest.mark.parametrize("divergence", TABLE)
def test_fdo_canonical_pieces_match_the_table(divergence):
    """Moving one desirable (or undesirable) response's log-ratio changes the loss exactly as the table's
    positive (or negative) piece does, divided by its side's count."""
    beta = 1.0
    pos, neg = TABLE[divergence]
    base, _ = run("fdo", unpaired_batch(), divergence=divergence, beta=beta)
    for index, piece, count in ((0, pos, 2), (3, neg, 3)):
        b = unpaired_batch()
        b.logps[index] += 0.7
        moved, _ = run("fdo", b, divergence=divergence, beta=beta)
        r_before = ratios(beta)[index]
        assert moved.item() - base.item() == pytest.approx((piece(r_before + 0.7) - piece(r_before)) / count, abs=1e-10)


def test_kldo_value_is_the_dv_bound_and_gradient_uses_the_running_average():
    beta = 0.5
    r = ratios(beta)
    mean_exp = sum(math.exp(x) for x in r[2:]) / 3
    dv = -sum(r[:2]) / 2 + math.log(mean_exp)
    b = unpaired_batch(True)
    previous = 2.0
    loss, metrics = run("fdo", b, {"ema": previous}, preset="kldo", beta=beta)
    assert loss.item() == pytest.approx(dv, abs=1e-12)
    loss.backward()
    m = 0.9 * previous + 0.1 * mean_exp  # the running average including this batch
    expected = [-beta / 2, -beta / 2] + [beta * math.exp(x) / (3 * (m + 1e-6)) for x in r[2:]]
    torch.testing.assert_close(b.logps.grad, torch.tensor(expected, dtype=torch.float64))
    opts = objectives.get("fdo").make_options({"preset": "kldo", "beta": beta})
    assert opts.next_state({"ema": previous}, metrics)["ema"] == pytest.approx(m)
    assert opts.next_state({}, metrics)["ema"] == pytest.approx(mean_exp)


def test_bco_shift_and_its_running_mean():
    beta = 0.5
    r = ratios(beta)
    delta = 0.3
    expected = -sum(log_sigmoid(x - delta) for x in r[:2]) / 2 - sum(log_sigmoid(-(x - delta)) for x in r[2:]) / 3
    loss, metrics = run("fdo", unpaired_batch(), {"delta": delta}, preset="bco", beta=beta)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    opts = objectives.get("fdo").make_options({"preset": "bco", "beta": beta})
    new = opts.next_state({"delta": delta}, metrics)["delta"]
    assert new == pytest.approx(0.9 * delta + 0.1 * sum(r) / 5)
    # With δ = 0 BCO is the JS canonical form, whose pieces carry −ln 2 each.
    js, _ = run("fdo", unpaired_batch(), divergence="js", beta=beta)
    bco0, _ = run("fdo", unpaired_batch(), preset="bco", beta=beta)
    assert bco0.item() - 2 * math.log(2) == pytest.approx(js.item(), abs=1e-12)


def test_kto_hand_value_with_and_without_reference_point():
    beta = 0.4
    logr = [a - b for a, b in zip([-2.0, -3.0, -1.0, -4.0, -2.5], [-2.5, -2.0, -1.5, -3.0, -3.5])]
    def sig(x):
        return 1 / (1 + math.exp(-x))

    for kl, z0 in ((False, 0.0), (True, max(0.0, ((-5.0 + 5.6) + (-4.0 + 4.2)) / 2))):
        expected = (
            sum(1.5 * (1 - sig(beta * (x - z0))) for x in logr[:2])
            + sum(0.5 * (1 - sig(beta * (z0 - x))) for x in logr[2:])
        ) / 5
        loss, _ = run("kto", unpaired_batch(kl=kl), beta=beta, desirable_weight=1.5, undesirable_weight=0.5)
        assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "name,options",
    [
        ("dpo", {}),
        ("ipo", {}),
        ("fdpo", {"regularizer": "js"}),
        ("fdpo", {"regularizer": "forward_kl"}),
        ("fpo", {}),
        ("fpo", {"divergence": "js"}),
    ],
)
def test_pair_objectives_push_chosen_up_and_rejected_down(name, options):
    b = pair_batch(True)
    loss, _ = run(name, b, beta=0.5, **options)
    loss.backward()
    assert (b.chosen_logps.grad < 0).all() and (b.rejected_logps.grad > 0).all()


@pytest.mark.parametrize(
    "options",
    [
        {"preset": "kldo"},
        {"preset": "bco"},
        {"preset": "hdo"},
        {"divergence": "pearson"},
        {"divergence": "tv"},
        {"divergence": "reverse_kl"},
    ],
)
def test_unpaired_objectives_push_desirable_up_and_undesirable_down(options):
    b = unpaired_batch(True)
    loss, _ = run("fdo", b, beta=0.5, **options)
    loss.backward()
    assert (b.logps.grad[:2] < 0).all() and (b.logps.grad[2:] > 0).all()


def test_unpaired_micro_batches_add_up():
    """Whole-batch side counts make micro-batch losses and gradients add up (here for hdo and kto)."""
    for name, options in (("fdo", {"preset": "hdo"}), ("fdo", {"divergence": "js"}), ("kto", {})):
        whole = unpaired_batch(True)
        loss, _ = run(name, whole, **options)
        (grad,) = torch.autograd.grad(loss, whole.logps)
        logps = whole.logps
        total, grads = 0.0, torch.zeros_like(logps)
        for rows in (slice(0, 3), slice(3, 5)):
            part = UnpairedBatch(logps[rows], whole.ref_logps[rows], whole.desirable[rows], 2, 3)
            part_loss, _ = run(name, part, **options)
            grads += torch.autograd.grad(part_loss, logps)[0]
            total += part_loss.item()
        assert total == pytest.approx(loss.item(), abs=1e-12)
        torch.testing.assert_close(grads, grad)


def test_option_errors():
    with pytest.raises(ValueError, match="fdpo.regularizer"):
        objectives.get("fdpo").make_options({"regularizer": "hellinger"})
    with pytest.raises(ValueError, match="fdo.preset"):
        objectives.get("fdo").make_options({"preset": "mine"})
    with pytest.raises(ValueError, match="dpo.beta must be > 0"):
        objectives.get("dpo").make_options({"beta": 0})
    assert divergences.get("alpha", alpha=0.5).name == "alpha"
