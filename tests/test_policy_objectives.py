"""The 2025–26 policy objectives (GSPO, CISPO, SAPO, GMPO, DPPO, REINFORCE++), dual clip, the KL estimators and
the added aggregations: hand-computed values and gradients, zero contributions where they must be zero, finite
values for log-ratios of ±50, and micro-batches that add up to the whole batch."""

import math

import pytest
import torch
from test_objectives import categorical_policy_step

from divalign import advantages, objectives
from divalign.advantages.registry import EstimatorInputs
from divalign.objectives import kl, make_batch
from divalign.objectives.policy import clipped_surrogate, truncated_is_weights

NEW = ["gspo", "cispo", "sapo", "gmpo", "dppo", "reinforce_pp", "reinforce_pp_baseline"]
LOG2 = math.log(2.0)


def run(name, batch, **values):
    obj = objectives.get(name)
    return obj.loss(batch, obj.make_options(values))


def one_response(log_ratios, advantage, dtype=torch.float64, **over):
    """One response whose tokens have the given log π_θ − log π_old (old log-probabilities −1)."""
    old = over.pop("old_logprobs", torch.full((1, len(log_ratios)), -1.0, dtype=dtype))
    logprobs = (old + torch.tensor([log_ratios], dtype=dtype)).requires_grad_()
    kw = {"logprobs": logprobs, "old_logprobs": old, "mask": torch.ones_like(old),
              "advantages": torch.tensor([advantage], dtype=dtype), "rewards": torch.zeros(1, dtype=dtype),
              "group_ids": torch.zeros(1, dtype=torch.long)}
    kw.update(over)
    return make_batch(**kw), logprobs


def loss_and_grad(name, batch, logprobs, **values):
    loss, metrics = run(name, batch, **values)
    (grad,) = torch.autograd.grad(loss, logprobs)
    return float(loss), grad[0].tolist(), metrics


# --------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values_and_straight_through_gradients():
    logp = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([math.log(0.25)], dtype=torch.float64)
    expected = {"k1": LOG2, "k2": 0.5 * LOG2**2, "k3": 0.5 - 1 + LOG2, "abs": LOG2, "k1+": LOG2, "k3+": 0.5 - 1 + LOG2}
    gradient = {"k1": 1.0, "k2": LOG2, "k3": 1 - 0.5, "abs": 1.0, "k1+": LOG2, "k3+": LOG2}  # d/d log π_θ
    for name, value in expected.items():
        estimate = kl.ESTIMATORS[name](logp, ref)
        (grad,) = torch.autograd.grad(estimate.sum(), logp)
        assert float(estimate.detach()) == pytest.approx(value, abs=1e-12), name
        assert float(grad) == pytest.approx(gradient[name], abs=1e-12), name
    corrected = kl.bias_corrected(kl.k3(logp, ref), torch.tensor([2.0], dtype=torch.float64))
    assert float(corrected.detach()) == pytest.approx(2 * (LOG2 - 0.5), abs=1e-12)


@pytest.mark.parametrize("estimator", list(kl.ESTIMATORS))
def test_every_kl_estimator_is_an_option_of_the_grpo_family(estimator):
    batch, logprobs = one_response([0.0, 0.0], 0.0, ref_logprobs=torch.tensor([[-1.5, -0.5]], dtype=torch.float64))
    loss, _, _ = loss_and_grad("grpo", batch, logprobs, beta=1.0, kl_estimator=estimator)
    per_token = kl.ESTIMATORS[estimator](batch.logprobs, batch.ref_logprobs)
    assert loss == pytest.approx(float(per_token.mean()), abs=1e-12)
    with pytest.raises(ValueError, match="kl_estimator"):
        objectives.get("grpo").make_options({"kl_estimator": "k4"})


def test_bias_corrected_kl_multiplies_by_the_ratio():
    batch, logprobs = one_response([LOG2, 0.0], 0.0, ref_logprobs=torch.tensor([[-1.0, -1.0]], dtype=torch.float64))
    plain, _, _ = loss_and_grad("grpo", batch, logprobs, beta=1.0)
    corrected, _, _ = loss_and_grad("grpo", batch, logprobs, beta=1.0, kl_bias_correction=True)
    k3_first = 0.5 - 1 + LOG2  # δ = −log 2 on the first token, 0 on the second
    assert plain == pytest.approx(k3_first / 2, abs=1e-12)
    assert corrected == pytest.approx(2 * k3_first / 2, abs=1e-12)


# --------------------------------------------------------------------------- dual clip


def test_dual_clip_caps_the_loss_of_negative_advantages():
    ratio = torch.tensor([5.0, 0.5, 1.1, 5.0], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    plain = clipped_surrogate(ratio, adv, 0.8, 1.2)
    dual = clipped_surrogate(ratio, adv, 0.8, 1.2, dual_clip=3.0)
    assert plain.tolist() == pytest.approx([5.0, 0.8, 1.1, -1.2])
    assert dual.tolist() == pytest.approx([3.0, 0.8, 1.1, -1.2])  # only the first is capped at −c·A = 3
    (grad,) = torch.autograd.grad(dual.sum(), ratio)
    assert grad.tolist() == pytest.approx([0.0, 0.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="dual_clip"):
        objectives.get("grpo").make_options({"dual_clip": 0.5})


# --------------------------------------------------------------------------- the objectives, by hand


def test_gspo_clips_the_length_normalised_sequence_ratio():
    s = math.exp(0.2)  # the geometric mean of e^0.1 and e^0.3
    for level in ("sequence", "token"):
        batch, lp = one_response([0.1, 0.3], 1.0)
        loss, grad, metrics = loss_and_grad("gspo", batch, lp, epsilon_low=0.2, epsilon_high=0.2, level=level)
        assert loss == pytest.approx(-1.2) and grad == [0.0, 0.0]  # above 1 + ε with A > 0: clipped, no gradient
        assert metrics["clip_fraction"] == pytest.approx(1.0)
        batch, lp = one_response([0.1, 0.3], -1.0)
        loss, grad, _ = loss_and_grad("gspo", batch, lp, epsilon_low=0.2, epsilon_high=0.2, level=level)
        assert loss == pytest.approx(s) and grad == pytest.approx([s / 2, s / 2])  # ∂s/∂log π_t = s/|y|


def test_cispo_keeps_a_gradient_where_the_ratio_is_far_outside_the_clip():
    batch, lp = one_response([math.log(10.0), 0.0], 1.0)
    loss, grad, metrics = loss_and_grad("cispo", batch, lp)
    logp = [math.log(10.0) - 1.0, -1.0]
    assert loss == pytest.approx(-(5.0 * logp[0] + 1.0 * logp[1]) / 2)  # weights min(10, 5) and 1, token mean
    assert grad == pytest.approx([-5.0 / 2, -1.0 / 2])
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    _, grpo_grad, _ = loss_and_grad("grpo", *one_response([math.log(10.0), 0.0], 1.0), beta=0.0)
    assert grpo_grad[0] == 0.0  # where PPO's clip gives the token nothing


def test_sapo_gate_value_and_gradient():
    sigma = 1 / (1 + math.exp(-(math.e - 1)))
    batch, lp = one_response([0.0, 1.0], 1.0)
    loss, grad, _ = loss_and_grad("sapo", batch, lp, temperature_pos=1.0)
    assert loss == pytest.approx((-2.0 - 4 * sigma) / 2)  # f(1) = 2/τ; seq_mean_token_mean over two tokens
    assert grad == pytest.approx([-1.0 / 2, -4 * sigma * (1 - sigma) * math.e / 2])  # slope 1 at ρ = 1
    batch, lp = one_response([0.0], -1.0)
    loss, grad, _ = loss_and_grad("sapo", batch, lp, temperature_neg=2.0)
    assert loss == pytest.approx(2 / 2.0) and grad == pytest.approx([1.0])


def test_gmpo_geometric_mean_with_sign_aware_log_space_clip():
    batch, lp = one_response([0.5, -0.5], 1.0)
    loss, grad, metrics = loss_and_grad("gmpo", batch, lp, epsilon_low=0.4, epsilon_high=0.4)
    g = math.exp((0.4 - 0.5) / 2)  # the first token clipped to 0.4 (A > 0 clips above only)
    assert loss == pytest.approx(-g) and grad == pytest.approx([0.0, -g / 2])
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    batch, lp = one_response([0.5, -0.5], -1.0)
    loss, grad, _ = loss_and_grad("gmpo", batch, lp, epsilon_low=0.4, epsilon_high=0.4)
    g = math.exp((0.5 - 0.4) / 2)  # the second clipped to −0.4 (A < 0 clips below only)
    assert loss == pytest.approx(g) and grad == pytest.approx([g / 2, 0.0])


@pytest.mark.parametrize("divergence", ["tv", "kl"])
def test_dppo_masks_tokens_whose_probability_moved_beyond_the_region(divergence):
    up = math.log(0.8 / 0.5)  # p: 0.5 → 0.8 (TV 0.3; binary KL 0.223), both beyond δ = 0.2
    small = math.log(0.55 / 0.5)  # p: 0.5 → 0.55, inside
    old = torch.full((1, 2), math.log(0.5), dtype=torch.float64)
    kw = {"old_logprobs": old}
    batch, lp = one_response([up, small], 1.0, **kw)
    loss, grad, metrics = loss_and_grad("dppo", batch, lp, divergence=divergence)
    assert grad == pytest.approx([0.0, -1.1 / 2])  # the moved token contributes nothing; weight ρ = 1.1
    assert loss == pytest.approx(-1.1 * math.log(0.55) / 2)
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    batch, lp = one_response([up, small], -1.0, **kw)  # pushing p down is still allowed for both
    _, grad, _ = loss_and_grad("dppo", batch, lp, divergence=divergence)
    assert grad == pytest.approx([1.6 / 2, 1.1 / 2])


def test_reinforce_pp_returns_whitening_and_baseline():
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    inputs = EstimatorInputs(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0, 0]), 1, mask)
    options = objectives.get("reinforce_pp").make_options({})
    out = advantages.get("reinforce_pp").fn(inputs, options)
    assert out.returns.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    std = math.sqrt(0.24)  # mean 0.6 over 5 tokens, biased variance
    assert out.token[0].tolist() == pytest.approx([0.4 / std] * 3)
    assert out.token[1].tolist() == pytest.approx([-0.6 / std] * 2 + [0.0])
    unbiased = objectives.get("reinforce_pp").make_options({"unbiased_whitening": True})
    std = math.sqrt(0.3)
    assert advantages.get("reinforce_pp").fn(inputs, unbiased).token[0, 0] == pytest.approx(0.4 / std)
    # the KL penalty enters every token's reward; the reward-to-go sums it
    inputs.kl, inputs.kl_coef = torch.tensor([[0.1, 0.1, 0.1], [0.2, 0.2, 0.0]], dtype=torch.float64), 1.0
    out = advantages.get("reinforce_pp").fn(inputs, options)
    torch.testing.assert_close(out.returns, torch.tensor([[0.7, 0.8, 0.9], [-0.4, -0.2, 0.0]], dtype=torch.float64))
    # the baseline variant centres the rewards per prompt first: 1, 0 → 0.5, −0.5
    inputs.kl = None
    base = advantages.get("reinforce_pp_baseline").fn(inputs, options)
    assert base.returns.tolist() == [[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]]


def test_reinforce_pp_loss_is_the_clipped_surrogate_on_token_advantages():
    batch, lp = one_response([0.0, 0.5], 0.0, token_advantages=torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    loss, grad, _ = loss_and_grad("reinforce_pp", batch, lp)
    assert loss == pytest.approx((-1.0 - 1.2) / 2) and grad == pytest.approx([-0.5, 0.0])
    options = objectives.get("reinforce_pp").make_options({})
    assert options.kl_penalty().coef == 0.01 and options.kl_penalty().estimator == "k1"
    assert objectives.get("reinforce_pp_baseline").make_options({}).kl_penalty() is None


def test_token_sum_and_seq_mean_token_sum_aggregations():
    two = make_batch(logprobs=torch.zeros(2, 2, dtype=torch.float64), old_logprobs=torch.zeros(2, 2, dtype=torch.float64),
                     mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
                     advantages=torch.tensor([1.0, -1.0], dtype=torch.float64), rewards=torch.zeros(2),
                     group_ids=torch.tensor([0, 0]))
    # per-token terms −1 (A = +1) and +1 (A = −1): sums −2 and +1
    assert float(run("grpo", two, beta=0.0, aggregation="token_sum")[0]) == pytest.approx(-1.0)
    assert float(run("grpo", two, beta=0.0, aggregation="seq_mean_token_sum")[0]) == pytest.approx(-0.5)


# --------------------------------------------------------------------------- properties of every new objective


def group_batch(logprobs, rewards, name, dtype=torch.float32):
    """Two prompts of three responses; REINFORCE++ objectives get their estimator's per-token advantages."""
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    base = torch.linspace(-2, -0.5, 18, dtype=dtype).reshape(6, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]] * 2, dtype=dtype)
    adv = advantages.group_normalized(rewards, ids, 2)
    inputs = EstimatorInputs(rewards, ids, 2, mask)
    token = None
    if name.startswith("reinforce_pp"):
        token = advantages.get(name).fn(inputs, objectives.get(name).make_options({})).token
    return make_batch(logprobs=logprobs, old_logprobs=base, ref_logprobs=base - 0.3, mask=mask, advantages=adv,
                      rewards=rewards, group_ids=ids, token_advantages=token)


# REINFORCE++ whitens over the whole batch: an equal-reward group's tokens move with the batch mean
@pytest.mark.parametrize("name", [n for n in NEW if not n.startswith("reinforce_pp")])
def test_a_group_with_equal_rewards_contributes_nothing(name):
    lp = (torch.linspace(-2, -0.5, 18).reshape(6, 3) + 0.1).requires_grad_()
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5, 0.5, 0.5])
    loss, _ = run(name, group_batch(lp, rewards, name), beta=0.0)
    loss.backward()
    assert torch.count_nonzero(lp.grad[3:]) == 0 and torch.count_nonzero(lp.grad[:3]) > 0


@pytest.mark.parametrize("sign", [50.0, -50.0])
@pytest.mark.parametrize("name", NEW)
def test_finite_loss_and_gradient_for_log_ratios_of_50(name, sign):
    base = torch.full((6, 3), -3.0)
    lp = (base + sign).requires_grad_()
    batch = group_batch(lp, torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), name)
    batch.old_logprobs, batch.ref_logprobs = base, base
    loss, metrics = run(name, batch, beta=1.0, kl_bias_correction=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize("name", NEW)
def test_micro_batches_add_up_to_the_whole_batch(name):
    lp = (torch.linspace(-2, -0.5, 18).reshape(6, 3) + 0.05).requires_grad_()
    rewards = torch.tensor([1.0, 0.0, 0.3, 0.0, 1.0, 1.0])
    whole = group_batch(lp, rewards, name)
    loss, _ = run(name, whole, beta=0.1)
    (grad_whole,) = torch.autograd.grad(loss, lp)
    total, grad = 0.0, torch.zeros_like(lp)
    for rows in (slice(0, 3), slice(3, 6)):
        part = whole.rows(torch.arange(6)[rows], lp[rows], num_sequences=6, num_groups=2,
                          num_tokens=int(whole.mask.sum()))
        part_loss, _ = run(name, part, beta=0.1)
        grad += torch.autograd.grad(part_loss, lp)[0]
        total += float(part_loss)
    assert total == pytest.approx(float(loss), abs=1e-6)
    torch.testing.assert_close(grad, grad_whole)


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_responses_without_a_token_count_in_the_sequence_mean_or_are_skipped(mode):
    # three responses, the last fully masked (truncated under DAPO's mask); per-token terms −1 and +0.5
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    batch = make_batch(logprobs=torch.zeros(3, 2, dtype=torch.float64), old_logprobs=torch.zeros(3, 2, dtype=torch.float64),
                       mask=mask, advantages=torch.tensor([1.0, -0.5, 1.0], dtype=torch.float64),
                       rewards=torch.zeros(3), group_ids=torch.tensor([0, 0, 0]))
    counted = float(run("grpo", batch, beta=0.0, aggregation=mode)[0])
    skipped = float(run("grpo", batch, beta=0.0, aggregation=mode, empty_responses="skip")[0])
    assert batch.num_nonempty == 2
    assert skipped == pytest.approx(counted * 3 / 2)  # TRL divides by 3 responses, verl by the 2 with a token
    assert counted != 0


# --------------------------------------------------------------------------- truncated importance sampling


def test_truncated_importance_weights_and_their_masked_variant():
    train = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    sampler = torch.log(torch.tensor([[0.5, 0.1, 0.45, 0.9]], dtype=torch.float64))  # ratios 1, 5, 1.11, 0.556
    weights = truncated_is_weights(train, sampler, cap=2.0)
    assert weights.tolist()[0] == pytest.approx([1.0, 2.0, 0.5 / 0.45, 0.5 / 0.9])
    assert truncated_is_weights(train, sampler, cap=2.0, mode="mask").tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert truncated_is_weights(train, sampler, cap=1.5, mode="mask").tolist() == [[1.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize("name", ["grpo", "gspo", "cispo", "sapo", "gmpo", "dppo"])
def test_importance_weights_multiply_the_policy_term_only(name):
    weights = torch.tensor([[2.0, 0.5]], dtype=torch.float64)
    plain, lp = one_response([0.05, -0.02], 1.0, ref_logprobs=torch.tensor([[-1.3, -0.8]], dtype=torch.float64))
    _, plain_grad, _ = loss_and_grad(name, plain, lp, beta=0.0)
    weighted, lp = one_response([0.05, -0.02], 1.0, ref_logprobs=torch.tensor([[-1.3, -0.8]], dtype=torch.float64),
                                is_weights=weights)
    _, weighted_grad, _ = loss_and_grad(name, weighted, lp, beta=0.0)
    if name == "gmpo":  # one sequence term: its gradient flows to every token through the geometric mean
        assert weighted_grad != plain_grad
    else:
        assert weighted_grad == pytest.approx([2.0 * plain_grad[0], 0.5 * plain_grad[1]])
    # the KL term is not weighted
    kl_only, lp = one_response([0.0, 0.0], 0.0, ref_logprobs=torch.tensor([[-1.3, -0.8]], dtype=torch.float64),
                               is_weights=weights)
    _, with_weights, _ = loss_and_grad(name, kl_only, lp, beta=1.0)
    kl_only, lp = one_response([0.0, 0.0], 0.0, ref_logprobs=torch.tensor([[-1.3, -0.8]], dtype=torch.float64))
    _, without, _ = loss_and_grad(name, kl_only, lp, beta=1.0)
    assert with_weights == pytest.approx(without)


@pytest.mark.parametrize("name", ["gspo", "cispo", "sapo", "gmpo", "dppo"])
def test_one_step_raises_above_average_responses_and_lowers_the_others(name):
    delta, rewards = categorical_policy_step(name, beta=0.0)
    assert (delta[rewards > 0] > 0).all() and (delta[rewards == 0] < 0).all()


def test_singleton_groups_get_zero_or_their_raw_reward():
    rewards = torch.tensor([1.0, 0.0, 0.7], dtype=torch.float64)
    ids = torch.tensor([0, 0, 1])  # the second prompt has one response
    zero = advantages.group_normalized(rewards, ids, 2)
    raw = advantages.group_normalized(rewards, ids, 2, singletons="raw")
    assert zero[2] == 0 and raw[2] == pytest.approx(0.7 / (1 + 1e-4))
    torch.testing.assert_close(zero[:2], raw[:2])
    inputs = EstimatorInputs(rewards, ids, 2, torch.ones(3, 2, dtype=torch.float64))
    options = objectives.get("grpo").make_options({"singleton_groups": "raw"})
    assert advantages.get("group").fn(inputs, options).sequence[2] == pytest.approx(0.7 / (1 + 1e-4))
    assert advantages.get("group_mean").fn(inputs, options).sequence[2] == pytest.approx(0.7)


def test_one_response_per_prompt_needs_the_raw_singleton_convention(tmp_path, tiny_model_dir, capsys):
    from divalign.cli import main

    common = ["rl", "--model", tiny_model_dir, "--task", "arithmetic", "--objective", "grpo", "--num-generations",
              "1", "--prompts-per-step", "4", "--max-new-tokens", "4", "--steps", "1", "--no-progress"]
    assert main([*common, "--output-dir", str(tmp_path / "zero")]) == 2
    assert "needs num-generations >= 2" in capsys.readouterr().err
    assert main([*common, "--grpo.singleton-groups", "raw", "--output-dir", str(tmp_path / "raw")]) == 0
