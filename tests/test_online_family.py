"""PPO, RLOO, Dr. GRPO, DAPO, DaGRPO and f-HAL: hand values, identities, and the trainer pieces they need."""

import math
import os
import sys

import pytest
import torch

from divalign import advantages, objectives
from divalign.config import build
from divalign.data.preferences import Unpaired
from divalign.data.prompts import DatasetPrompts, Example
from divalign.errors import RunFailed
from divalign.models import frozen_copy, load_causal_lm
from divalign.objectives import UnpairedBatch, make_batch
from divalign.rewards import PerSample, RewardOptions, get, overlong_penalty
from divalign.trainers.online import OnlineTrainer, RLConfig


def run(name, batch, **options):
    obj = objectives.get(name)
    return obj.loss(batch, obj.make_options(options))


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = advantages.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: δ2 = 1 − 0.3 = 0.7; δ1 = 0 + 0.9·0.3 − 0.2 = 0.07; δ0 = 0.9·0.2 − 0.1 = 0.08.
    a2 = 0.7
    a1 = 0.07 + 0.72 * a2
    a0 = 0.08 + 0.72 * a1
    torch.testing.assert_close(adv[0], torch.tensor([a0, a1, a2]))
    # Row 1 ends at t = 1: δ1 = 0 − 0.5, δ0 = 0.5 + 0.9·0.5 − 0.4.
    b1 = -0.5
    torch.testing.assert_close(adv[1], torch.tensor([0.55 + 0.72 * b1, b1, 0.0]))
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_ppo_with_one_epoch_and_no_clipping_is_the_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([[0.5, -1.0, 2.0], [1.5, -0.2, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]], requires_grad=True)
    batch = make_batch(logprobs=logp, old_logprobs=logp.detach(), mask=mask, advantages=torch.zeros(2),
                       rewards=torch.zeros(2), group_ids=torch.tensor([0, 1]), token_advantages=adv,
                       values=values, old_values=values.detach(), returns=values.detach() + 1.0)
    loss, metrics = run("ppo", batch, epsilon=1e9, vf_coef=0.0)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, -adv * mask / mask.sum())  # ∇ of −Σ A_t log π_t / N_tokens
    assert metrics["clip_fraction"] == 0.0
    # Value loss: ½ (V − R)² averaged over tokens, R = V + 1 → ½.
    assert metrics["value_loss"] == pytest.approx(0.5)


def test_ppo_clipping_and_value_clipping():
    logp = torch.tensor([[-0.5]], requires_grad=True)
    values = torch.tensor([[2.0]], requires_grad=True)
    batch = make_batch(logprobs=logp, old_logprobs=torch.tensor([[-1.0]]), mask=torch.ones(1, 1),
                       advantages=torch.zeros(1), rewards=torch.zeros(1), group_ids=torch.tensor([0]),
                       token_advantages=torch.tensor([[1.0]]), values=values, old_values=torch.tensor([[1.0]]),
                       returns=torch.tensor([[0.0]]))
    loss, metrics = run("ppo", batch, epsilon=0.2, value_epsilon=0.2, vf_coef=0.5)
    # ρ = e^0.5 > 1.2 with A > 0 → clipped: −1.2; value: max((2−0)², (1.2−0)²)/2 = 2.
    assert loss.item() == pytest.approx(-1.2 + 0.5 * 2.0)
    assert metrics["clip_fraction"] == 1.0 and metrics["value_clip_fraction"] == 1.0


def test_rloo_loss_hand_value():
    logp = torch.tensor([[-1.0, -1.0], [-0.5, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.0], [-0.5, -0.3]])
    adv = torch.tensor([1.0, -1.0])
    batch = make_batch(logprobs=logp, old_logprobs=old, mask=torch.ones(2, 2), advantages=adv,
                       rewards=torch.zeros(2), group_ids=torch.tensor([0, 0]))
    loss, _ = run("rloo", batch, epsilon=0.2)
    r0, r1 = math.exp(0.2), math.exp(-0.2)  # sequence ratios
    expected = (-min(r0 * 1, min(r0, 1.2) * 1) + -min(r1 * -1, max(r1, 0.8) * -1)) / 2
    assert loss.item() == pytest.approx(expected)


def test_dr_grpo_and_dapo_presets():
    dr = objectives.get("dr_grpo").make_options({})
    assert (dr.aggregation, dr.beta, dr.advantage) == ("seq_mean_token_sum_norm", 0.0, "group_mean")
    dapo = objectives.get("dapo").make_options({})
    assert (dapo.epsilon_low, dapo.epsilon_high, dapo.aggregation, dapo.dynamic_sampling) == (0.2, 0.28,
                                                                                             "token_mean", True)
    assert objectives.get("dapo").loss is objectives.get("grpo").loss


def test_distinct_pairs_masks_near_identical_responses():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    scores = torch.tensor([1.0, 0.98, 0.4, 0.1])  # the second (wrong) answer is almost right
    ids = torch.zeros(4, dtype=torch.long)
    a = advantages.distinct_pairs(rewards, scores, ids, 1, threshold=0.1, scale=False)
    # Response 0 is distinct from 2 and 3 only: (1 + 1)/2; response 1 from 2 and 3, of equal reward: 0;
    # responses 2 and 3 from the three others: (0 − 1)/3.
    torch.testing.assert_close(a, torch.tensor([1.0, 0.0, -1 / 3, -1 / 3]))
    unmasked = advantages.distinct_pairs(rewards, scores, ids, 1, threshold=0.0, scale=False)
    torch.testing.assert_close(unmasked, rewards - rewards.mean())


def test_fhal_is_fgrpo_at_lambda_0_and_fdo_at_lambda_1():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -1.5], [-0.2, -0.9]], requires_grad=True)
    online = make_batch(logprobs=lp, old_logprobs=lp.detach(), ref_logprobs=lp.detach() - 0.3,
                        mask=torch.ones(3, 2), advantages=torch.tensor([1.2, -0.3, -0.9]),
                        rewards=torch.tensor([1.0, 0.0, 0.0]), group_ids=torch.zeros(3, dtype=torch.long))
    pref_logps = torch.tensor([-3.0, -4.0, -2.0], requires_grad=True)
    pref = UnpairedBatch(pref_logps, torch.tensor([-3.5, -3.0, -2.5]), torch.tensor([True, False, False]), 1, 2)
    common = {"divergence": "js", "beta": 0.5}
    fhal = objectives.get("fhal")

    def fhal_loss(mix):  # the on-policy part plus the off-policy part
        options = fhal.make_options({"mix": mix, **common})
        return fhal.loss(online, options)[0] + fhal.preference_loss(pref, options)[0]

    fg, _ = run("fgrpo", online, **common)
    assert fhal_loss(0.0).item() == pytest.approx(fg.item())
    fdo = objectives.get("fdo")
    fd, _ = fdo.loss(pref, fdo.make_options({"divergence": "js", "beta": 0.5}), {})
    assert fhal_loss(1.0).item() == pytest.approx(fd.item())
    assert fhal_loss(0.5).item() == pytest.approx(0.5 * fg.item() + 0.5 * fd.item())


def test_overlong_penalty_and_weighted_rewards(tmp_path, monkeypatch):
    assert overlong_penalty([10, 16, 18, 20], max_tokens=20, buffer=4) == [0.0, 0.0, -0.5, -1.0]
    (tmp_path / "slow_reward.py").write_text(
        "import time\n"
        "def slow(completion, answer):\n    time.sleep(5)\n    return 1.0\n"
        "def length(completion, answer):\n    return len(completion)\n"
        "def broken(completion, answer):\n    raise KeyError('x')\n")
    monkeypatch.chdir(tmp_path)  # the current directory is importable, in this process and in the workers
    reward = get("0.5*exact + 2*slow_reward:length")
    assert reward(["p", "p"], ["42", "4"], ["42", "42"]) == [0.5 + 4.0, 2.0] and reward.failures == 0
    lenient = RewardOptions(reward_timeout=0.5, reward_workers=2, reward_max_failures=1.0)
    slow = get("slow_reward:slow", lenient)
    assert slow(["p"], ["x"], [""]) == [0.0] and slow.failures == 1  # killed at the timeout, scored 0, counted
    broken = get("slow_reward:broken", lenient)
    assert broken(["p", "p"], ["x", "y"], ["", ""]) == [0.0, 0.0] and broken.failures == 2
    with pytest.raises(RunFailed, match="slow_reward:broken: 2 of 2 calls failed .*raised KeyError"):
        get("slow_reward:broken", RewardOptions(reward_max_failures=0.5))(["p", "p"], ["x", "y"], ["", ""])


def digits(completion, answer):
    return sum(c.isdigit() for c in completion) / 6


def make_trainer(model_dir, objective, reward=None, preference=None, **over):
    model, tok = load_causal_lm(model_dir)
    cfg = build(RLConfig, {"model": "in-memory", "objective": objective, "prompts_per_step": 4,
                           "num_generations": 4, "max_new_tokens": 6, "learning_rate": 1e-3, "progress": False,
                           **over})
    source = DatasetPrompts([Example(f"{i}+{i}=", str(2 * i)) for i in range(10)], seed=0)
    return OnlineTrainer(cfg, model, tok, source, reward or PerSample(digits), frozen_copy(model), preference)


def test_dynamic_sampling_never_keeps_a_group_without_signal(tiny_model_dir):
    # Rewards are equal within half of the groups (prompts with an even number): those must be dropped.
    def parity(completion, answer):
        return 0.0 if int(answer) % 4 == 0 else float(len(completion) % 2)

    trainer = make_trainer(tiny_model_dir, "dapo", PerSample(parity))
    for step in range(3):
        batch = trainer.collector.collect(step)
        spread = batch.rewards.view(-1, 4).max(-1).values - batch.rewards.view(-1, 4).min(-1).values
        assert (spread > 0).all() and batch.num_groups <= 4
        assert batch.stats["groups_sampled"] > batch.stats["groups_kept"] or batch.num_groups == 4
    row = trainer.step(3)
    assert math.isfinite(row["loss"])


def test_dagrpo_adds_reference_solutions_to_failing_groups(tiny_model_dir):
    trainer = make_trainer(tiny_model_dir, "dagrpo", PerSample(lambda c, a: float(c.strip() == a)))
    batch = trainer.collector.collect(0)
    assert batch.anchors.sum() == batch.num_groups  # an untrained model fails every group
    anchor_texts = trainer.tokenizer.batch_decode(batch.rollout.completion_ids[batch.anchors],
                                                  skip_special_tokens=True)
    assert anchor_texts == [batch.answers[i] for i in batch.anchors.nonzero().squeeze(-1).tolist()]
    assert (batch.rewards[batch.anchors] == 1.0).all()
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    row = trainer.step(0)
    assert row["anchors"] == 4 and math.isfinite(row["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


@pytest.mark.parametrize("objective,extra", [("ppo", {"ppo_epochs": 2, "minibatches": 2}), ("rloo", {}),
                                             ("dr_grpo", {})])
def test_online_objectives_train(tiny_model_dir, objective, extra):
    trainer = make_trainer(tiny_model_dir, objective, **extra)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    row = trainer.step(0)
    assert math.isfinite(row["loss"]) and row["reward_std"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    if objective == "ppo":
        assert "value_loss" in row and trainer.value_head.weight.abs().sum() > 0
        assert "value_head" in trainer.state_dict(1)


def test_fhal_trainer_uses_its_preference_data(tiny_model_dir):
    pref = [Unpaired(f"{i}+1=", str(i + 1), True) for i in range(6)] + \
        [Unpaired(f"{i}+1=", str(i + 7), False) for i in range(6)]
    trainer = make_trainer(tiny_model_dir, "fhal", preference=pref, preference_batch_size=6)
    row = trainer.step(0)
    assert math.isfinite(row["loss"]) and "preference_divergence_estimate" in row
    assert math.isfinite(row["divergence_estimate"])


def test_fhal_cli_needs_preference_data(tiny_model_dir, tmp_path):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "divalign", "rl", "--model", tiny_model_dir, "--task",
                           "arithmetic", "--objective", "fhal", "--output-dir", tmp_path / "o"],
                          capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert proc.returncode == 2 and "needs --preference-data" in proc.stderr
