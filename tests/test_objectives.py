import itertools
import math

import pytest
import torch

from divalign import advantages, objectives
from divalign.objectives import make_batch

DIVERGENCES = [
    ("kl", {}),
    ("reverse_kl", {}),
    ("pearson", {}),
    ("hellinger", {}),
    ("js", {}),
    ("tv", {}),
    ("alpha", {"alpha": 0.5}),
]


def options(name, **values):
    return objectives.get(name).make_options(values)


def run(name, batch, **values):
    obj = objectives.get(name)
    return obj.loss(batch, obj.make_options(values))


# --------------------------------------------------------------------------- hand-computed values


def small_batch(**over):
    logprobs = torch.tensor([[-0.6, -2.0], [-0.5, -1.5]], requires_grad=True)
    kw = dict(
        logprobs=logprobs,
        old_logprobs=torch.tensor([[-1.1, -2.0], [-0.5, -1.0]]),
        ref_logprobs=torch.tensor([[-0.8, -2.5], [-0.7, -1.5]]),
        mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]]),
        advantages=torch.tensor([1.0, -1.0]),
        rewards=torch.tensor([1.0, 0.0]),
        group_ids=torch.tensor([0, 0]),
    )
    kw.update(over)
    return make_batch(**kw)


def test_grpo_hand_values_for_each_aggregation():
    # Response 0 (A=+1): ratios e^0.5 (clipped to 1.2) and 1. Response 1 (A=−1): ratio 1; its 2nd token is padding.
    t00, t01, t10 = -1.2, -1.0, 1.0
    expected = {
        "seq_mean_token_mean": ((t00 + t01) / 2 + t10) / 2,
        "token_mean": (t00 + t01 + t10) / 3,
        "seq_mean_token_sum_norm": (t00 + t01 + t10) / (2 * 2),
    }
    for mode, value in expected.items():
        loss, metrics = run("grpo", small_batch(), beta=0.0, aggregation=mode)
        assert loss.item() == pytest.approx(value, abs=1e-6), mode
        assert metrics["clip_fraction"] == pytest.approx(1 / 3)


def test_grpo_kl_term_hand_value():
    # k3 = e^δ − δ − 1 with δ = ref − logp, per token; aggregated by the GRPO mean.
    def k3(lp, ref):
        d = ref - lp
        return math.exp(d) - d - 1

    kl_seq0 = (k3(-0.6, -0.8) + k3(-2.0, -2.5)) / 2
    kl_seq1 = k3(-0.5, -0.7)
    policy = ((-1.2 - 1.0) / 2 + 1.0) / 2
    loss, metrics = run("grpo", small_batch(), beta=0.1)
    assert loss.item() == pytest.approx(policy + 0.1 * (kl_seq0 + kl_seq1) / 2, abs=1e-6)
    assert metrics["policy_loss"] == pytest.approx(policy, abs=1e-6)


def test_fgrpo_sequence_level_kl_hand_value():
    # r_i = β·Σ_t(logp − ref): r0 = 0.2 + 0.5 = 0.7, r1 = 0.2 (padding excluded); β = 1.
    # KL canonical: aligned −(r + 1), unaligned e^r; mean over the G = 2 responses of the prompt.
    r0, r1 = 0.7, 0.2
    expected = (1.0 * -(r0 + 1) + 1.0 * math.exp(r1)) / 2
    loss, metrics = run("fgrpo", small_batch(), divergence="kl", level="sequence", beta=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["divergence_estimate"] == pytest.approx(-expected, abs=1e-6)


def test_fgrpo_token_level_hellinger_hand_value():
    # Hellinger canonical: aligned −g = e^(−r/2) − 1, unaligned f*∘g = e^(r/2) − 1, r per token (β = 0.5).
    # group_token_mean: sum over the prompt's 3 real tokens / 3; advantages ±2 weight by |a|.
    beta = 0.5
    r = [beta * 0.2, beta * 0.5, beta * 0.2]
    terms = [2 * (math.exp(-r[0] / 2) - 1), 2 * (math.exp(-r[1] / 2) - 1), 2 * (math.exp(r[2] / 2) - 1)]
    batch = small_batch(advantages=torch.tensor([2.0, -2.0]))
    loss, _ = run("fgrpo", batch, divergence="hellinger", level="token", beta=beta, loss_scale=3.0)
    assert loss.item() == pytest.approx(3.0 * sum(terms) / 3, abs=1e-6)


def test_fgrpo_gamma_old_adds_the_behaviour_log_ratio():
    # With gamma_old = 1, r = β(logp − ref) + (logp − old); TV canonical: aligned −(σ(r) − ½), unaligned σ(r) − ½.
    def sig(x):
        return 1 / (1 + math.exp(-x))

    r0 = 1.0 * (0.2 + 0.5) + (0.5 + 0.0)
    r1 = 1.0 * 0.2 + 0.0
    expected = (-(sig(r0) - 0.5) + (sig(r1) - 0.5)) / 2
    loss, _ = run("fgrpo", small_batch(), divergence="tv", level="sequence", beta=1.0, gamma_old=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_fgrpo_softmax_importance_weights():
    # One prompt, 4 responses; two aligned. Weights ∝ exp(R − log π_old(y)), normalised to average 1 per side.
    lp = torch.zeros(4, 1, requires_grad=True)
    old = torch.tensor([[-1.0], [-2.0], [-1.5], [-0.5]])
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = advantages.group_normalized(rewards, torch.zeros(4, dtype=torch.long), 1)
    batch = make_batch(
        logprobs=lp,
        old_logprobs=old,
        ref_logprobs=torch.zeros(4, 1),
        mask=torch.ones(4, 1),
        advantages=adv,
        rewards=rewards,
        group_ids=torch.zeros(4, dtype=torch.long),
    )
    loss, metrics = run("fgrpo", batch, divergence="kl", level="sequence", beta=1.0, weights="softmax_is")
    e = [math.exp(1 + 1.0), math.exp(1 + 2.0)]  # aligned: +R − log π_old
    w_pos = [2 * x / sum(e) for x in e]
    e = [math.exp(0 + 1.5), math.exp(0 + 0.5)]  # unaligned: −R − log π_old
    w_neg = [2 * x / sum(e) for x in e]
    a = adv.abs().tolist()
    # r = 0 everywhere: aligned term −(0 + 1), unaligned e^0 = 1.
    expected = (a[0] * w_pos[0] * -1 + a[1] * w_pos[1] * -1 + a[2] * w_neg[0] + a[3] * w_neg[1]) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert 0 < metrics["is_ess"] <= 1


# --------------------------------------------------------------------------- behaviour


def categorical_policy_step(name, lr=0.5, **values):
    """A policy over 4 two-token responses (independent softmax per position); one SGD step on one group."""
    torch.manual_seed(0)
    theta = torch.zeros(2, 3, requires_grad=True)  # 2 positions × 3 tokens
    responses = torch.tensor([[0, 0], [1, 1], [0, 1], [2, 2]])
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def seq_logprobs():
        logp = torch.log_softmax(theta, -1)
        return torch.stack([logp[0, responses[:, 0]], logp[1, responses[:, 1]]], dim=1)

    before = seq_logprobs().detach()
    ids = torch.zeros(4, dtype=torch.long)
    batch = make_batch(
        logprobs=seq_logprobs(),
        old_logprobs=before,
        ref_logprobs=before.clone(),
        mask=torch.ones(4, 2),
        advantages=advantages.group_normalized(rewards, ids, 1),
        rewards=rewards,
        group_ids=ids,
    )
    loss, _ = run(name, batch, **values)
    loss.backward()
    with torch.no_grad():
        theta -= lr * theta.grad
    after = seq_logprobs().detach()
    return (after - before).sum(-1), rewards


GRID = [
    dict(divergence=d, alpha=p.get("alpha", 0.5), link=lk, level=lv)
    for (d, p), lk, lv in itertools.product(DIVERGENCES, ["canonical", "fgan"], ["token", "sequence"])
]


@pytest.mark.parametrize("values", GRID, ids=lambda v: f"{v['divergence']}-{v['link']}-{v['level']}")
def test_fgrpo_step_raises_above_average_and_lowers_below_average(values):
    delta, rewards = categorical_policy_step("fgrpo", beta=1.0, **values)
    assert (delta[rewards > 0] > 0).all()
    assert (delta[rewards == 0] < 0).all()


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_grpo_step_raises_above_average_and_lowers_below_average(mode):
    delta, rewards = categorical_policy_step("grpo", beta=0.0, aggregation=mode)
    assert (delta[rewards > 0] > 0).all()
    assert (delta[rewards == 0] < 0).all()


def two_group_batch(logprobs, rewards):
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    base = torch.linspace(-2, -0.5, 18).reshape(6, 3)
    return make_batch(
        logprobs=logprobs,
        old_logprobs=base,
        ref_logprobs=base - 0.3,
        mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]] * 2, dtype=torch.float),
        advantages=advantages.group_normalized(rewards, ids, 2),
        rewards=rewards,
        group_ids=ids,
    )


@pytest.mark.parametrize(
    "name,values",
    [("grpo", {"beta": 0.0})]
    + [
        ("fgrpo", {"divergence": d, **p, "level": lv})
        for (d, p), lv in itertools.product(DIVERGENCES, ["token", "sequence"])
    ],
)
def test_group_with_equal_rewards_contributes_nothing(name, values):
    lp = (torch.linspace(-2, -0.5, 18).reshape(6, 3) + 0.1).requires_grad_()
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.5])  # second group: all equal
    loss, _ = run(name, two_group_batch(lp, rewards), **values)
    loss.backward()
    assert torch.count_nonzero(lp.grad[3:]) == 0
    assert torch.count_nonzero(lp.grad[:3]) > 0


@pytest.mark.parametrize("sign", [50.0, -50.0])
@pytest.mark.parametrize(
    "name,values",
    [("grpo", {"beta": 1.0})]
    + [
        ("fgrpo", {"divergence": d, **p, "level": lv, "link": lk, "beta": 1.0, "gamma_old": 1.0})
        for (d, p), lv, lk in itertools.product(DIVERGENCES, ["token", "sequence"], ["canonical", "fgan"])
    ],
)
def test_finite_loss_and_gradient_for_extreme_log_ratios(name, values, sign):
    base = torch.full((6, 3), -3.0)
    lp = (base + sign).requires_grad_()
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    batch = make_batch(
        logprobs=lp,
        old_logprobs=base,
        ref_logprobs=base,
        mask=torch.ones(6, 3),
        advantages=advantages.group_normalized(rewards, ids, 2),
        rewards=rewards,
        group_ids=ids,
    )
    loss, metrics = run(name, batch, **values)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize(
    "name,values",
    [
        ("grpo", {"beta": 0.1, "aggregation": m})
        for m in ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"]
    ]
    + [("fgrpo", {"divergence": "js", "level": "sequence"})]
    + [
        ("fgrpo", {"divergence": "pearson", "aggregation": m, "weights": "softmax_is"})
        for m in ["group_token_mean", "token_mean", "seq_mean_token_mean"]
    ],
)
def test_micro_batches_sum_to_the_whole_batch(name, values):
    """Gradient accumulation over whole-group micro-batches gives the whole-batch loss and gradient."""
    lp = (torch.linspace(-2, -0.5, 18).reshape(6, 3) + 0.05).requires_grad_()
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.0, 1.0, 1.0])
    whole = two_group_batch(lp, rewards)
    loss, _ = run(name, whole, **values)
    (grad_whole,) = torch.autograd.grad(loss, lp)

    total = 0.0
    grads = []
    for rows in (slice(0, 3), slice(3, 6)):
        part = make_batch(
            logprobs=lp[rows],
            old_logprobs=whole.old_logprobs[rows],
            ref_logprobs=whole.ref_logprobs[rows],
            mask=whole.mask[rows],
            advantages=whole.advantages[rows],
            rewards=rewards[rows],
            group_ids=whole.group_ids[rows],
            num_sequences=6,
            num_groups=2,
            num_tokens=int(whole.mask.sum()),
            max_length=3,
        )
        part_loss, _ = run(name, part, **values)
        grads.append(torch.autograd.grad(part_loss, lp)[0])
        total += part_loss.item()
    assert total == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(grads[0] + grads[1], grad_whole)


# --------------------------------------------------------------------------- advantages and registry


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 2.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1])
    a = advantages.group_normalized(r, ids, 2)
    torch.testing.assert_close(a[:4], torch.tensor([1.0, -1.0, 1.0, -1.0]), atol=1e-3, rtol=0)
    assert torch.equal(a[4:], torch.zeros(2))
    torch.testing.assert_close(
        advantages.group_normalized(r, ids, 2, scale=False)[:4], torch.tensor([0.5, -0.5, 0.5, -0.5])
    )


def test_rloo_advantages_sum_to_zero_per_group():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(12, generator=g)
    ids = torch.arange(3).repeat_interleave(4)
    a = advantages.leave_one_out(r, ids, 3)
    assert a[1].item() == pytest.approx(r[1].item() - (r[0] + r[2] + r[3]).item() / 3)
    for k in range(3):
        assert abs(a[ids == k].sum().item()) < 1e-6


def test_registry_rejects_unknown_names_and_options():
    """The math layer raises ValueError (the command line reports it as the user's mistake: test_config)."""
    with pytest.raises(ValueError, match="unknown objective 'ppo2'.*fgrpo, fhal, fpo, gmpo, grpo, gspo"):
        objectives.get("ppo2")
    with pytest.raises(ValueError, match=r"'dpo' \(pairs family\) is not accepted here .*expected one of: cispo, dagrpo"):
        objectives.get("dpo", ("online",))
    with pytest.raises(ValueError, match="unknown option 'epsilon'"):
        objectives.get("grpo").make_options({"epsilon": 0.2})
    with pytest.raises(ValueError, match="unknown divergence 'bogus'"):
        options("fgrpo", divergence="bogus")
    with pytest.raises(ValueError, match="fgrpo.beta must be > 0"):
        options("fgrpo", beta=0.0)
    with pytest.raises(ValueError, match="unknown aggregation"):
        options("grpo", aggregation="mean")
    with pytest.raises(ValueError, match="unknown advantage estimator 'baseline'.*distinct, gae, group"):
        advantages.get("baseline")


def test_every_online_objective_declares_a_registered_default_estimator_it_can_use():
    for name in objectives.names(("online",)):
        opts = objectives.get(name).options()
        estimator = advantages.get(opts.advantage)
        assert estimator.usable_with(opts), name
    assert advantages.get("gae").needs_values and advantages.get("distinct").needs_scores
    assert not advantages.get("gae").usable_with(options("grpo"))
