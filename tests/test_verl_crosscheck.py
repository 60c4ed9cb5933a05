"""divalign's DPPO, dual-clip PPO loss with its aggregation modes, REINFORCE++ advantages and KL estimators against
the values verl 0.9.1's own code computed on the same inputs (tests/verl_capture.py, which also regenerates
them), in float64.

Losses, gradients and KL estimates agree to 1e-12, except where verl divides by a count + 1e-8 (its masked means,
so the whitened REINFORCE++ advantages, and the per-response token mean of seq-mean-token-mean), which moves the
value by about 1e-9 relative: there 1e-8. divalign divides by the count."""

import json

import pytest
import torch
from verl_capture import REFERENCE, holed_mask, inputs

from divalign import advantages, objectives
from divalign.advantages.gae import gae, whiten
from divalign.advantages.reinforce_pp import reward_to_go
from divalign.advantages.registry import EstimatorInputs
from divalign.objectives import kl, make_batch

STORED = {record["name"]: record for record in json.loads(REFERENCE.read_text())["records"]}
DATA = inputs()
MASK = DATA["mask"]


def as_tensor(values):
    return torch.tensor(values, dtype=torch.float64)


def loss_and_grad(objective: str, options: dict):
    logps = DATA["logps"].clone().requires_grad_()
    batch = make_batch(logprobs=logps, old_logprobs=DATA["old_logps"], ref_logprobs=DATA["ref_logps"], mask=MASK,
                       advantages=torch.zeros(4, dtype=torch.float64), token_advantages=DATA["token_advantages"],
                       rewards=DATA["rewards"], group_ids=torch.tensor(DATA["group_ids"]))
    obj = objectives.get(objective)
    loss, _ = obj.loss(batch, obj.make_options(options))
    loss.backward()
    return float(loss.detach()), logps.grad * MASK


CASES = {
    "dppo_tv": ("dppo", {"divergence": "tv"}),
    "dppo_tv-radii": ("dppo", {"divergence": "tv", "delta_low": 0.1, "delta_high": 0.3, "max_weight": 2.0}),
    "dppo_kl": ("dppo", {"divergence": "kl"}),
    "dppo_kl-radii": ("dppo", {"divergence": "kl", "delta_low": 0.05, "delta_high": 0.1}),
    **{f"ppo-dual-clip/{mode}": ("grpo", {"beta": 0.0, "dual_clip": 3.0, "aggregation": mode.replace("-", "_")})
       for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum")},
}


@pytest.mark.parametrize("name", list(CASES))
def test_losses_and_gradients(name):
    objective, options = CASES[name]
    record = STORED[name]
    assert any(abs(g) > 1e-3 for row in record["grad"] for g in row)
    loss, grad = loss_and_grad(objective, options)
    tolerance = 1e-8 if name.endswith("seq-mean-token-mean") else 1e-12
    assert loss == pytest.approx(record["loss"], abs=tolerance, rel=tolerance)
    torch.testing.assert_close(grad, as_tensor(record["grad"]), atol=tolerance, rtol=tolerance)


def test_reinforce_pp_returns_and_advantages():
    inputs_ = EstimatorInputs(DATA["rewards"], torch.tensor(DATA["group_ids"]), 2, MASK, kl=DATA["kl"], kl_coef=0.1)
    options = objectives.get("reinforce_pp").make_options({"gamma": 0.9, "unbiased_whitening": True})
    out = advantages.get("reinforce_pp").fn(inputs_, options)
    torch.testing.assert_close(out.returns, as_tensor(STORED["reinforce_pp"]["returns"]), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(out.token, as_tensor(STORED["reinforce_pp"]["advantages"]), atol=1e-8, rtol=1e-8)


def test_reinforce_pp_baseline_advantages():
    inputs_ = EstimatorInputs(DATA["rewards"], torch.tensor(DATA["group_ids"]), 2, MASK)
    options = objectives.get("reinforce_pp_baseline").make_options({"unbiased_whitening": True})
    out = advantages.get("reinforce_pp_baseline").fn(inputs_, options)
    expected = as_tensor(STORED["reinforce_pp_baseline"]["advantages"])
    torch.testing.assert_close(out.token, expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "abs", "k1+", "k3+"])
def test_kl_estimators(name):
    logps = DATA["logps"].clone().requires_grad_()
    estimate = kl.ESTIMATORS[name](logps, DATA["ref_logps"]) * MASK
    estimate.sum().backward()
    record = STORED[f"kl/{name}"]
    torch.testing.assert_close(estimate.detach(), as_tensor(record["value"]), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logps.grad * MASK, as_tensor(record["grad"]), atol=1e-12, rtol=1e-12)


def test_gae_and_reward_to_go_carry_through_holes_in_the_mask():
    holes = holed_mask(MASK)
    last = MASK.sum(-1).long() - 1
    token_rewards = -0.1 * DATA["kl"]
    token_rewards[torch.arange(4), last] += DATA["rewards"]
    token_rewards = token_rewards * holes
    values = torch.linspace(-0.5, 0.7, 24, dtype=torch.float64).reshape(4, 6)
    raw, returns = gae(token_rewards, values, holes, gamma=0.95, lam=0.9, holes="carry")
    record = STORED["gae-holes"]
    # verl keeps the carried advantage at a hole in its returns; divalign writes 0 there (never trained on)
    torch.testing.assert_close(returns * holes, as_tensor(record["returns"]) * holes, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(whiten(raw, holes, unbiased=True), as_tensor(record["advantages"]) * holes,
                               atol=1e-8, rtol=1e-8)
    restarted, _ = gae(token_rewards, values, holes, gamma=0.95, lam=0.9, holes="restart")
    assert not torch.allclose(restarted, raw)  # the holes matter for these inputs
    plain_carry, _ = gae(token_rewards, values, MASK, gamma=0.95, lam=0.9, holes="carry")
    plain_restart, _ = gae(token_rewards, values, MASK, gamma=0.95, lam=0.9, holes="restart")
    torch.testing.assert_close(plain_carry, plain_restart)  # without holes the two agree

    record = STORED["reinforce_pp-holes"]
    torch.testing.assert_close(reward_to_go(token_rewards, holes, 0.9), as_tensor(record["returns"]) * holes,
                               atol=1e-12, rtol=1e-12)
