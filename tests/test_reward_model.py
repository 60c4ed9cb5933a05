import pytest
import torch

from divalign.config import build
from divalign.data.preferences import Pair
from divalign.errors import UserError
from divalign.models import load_reward_model
from divalign.objectives.reward import BradleyTerryOptions, bradley_terry
from divalign.rewards import get as get_reward
from divalign.trainers.reward_model import RewardModelTrainer, RMConfig, length_baseline_accuracy


def pairs(n, seed):
    """The preferred response has a 7 at a random place, the other has another digit there; lengths are equal
    so that length carries no signal."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, b, where, other = torch.randint(0, 10, (4,), generator=g).tolist()
        digits = [d if d != 7 else 1 for d in torch.randint(0, 10, (4,), generator=g).tolist()]
        good, bad = list(digits), list(digits)
        good[where % 4], bad[where % 4] = 7, other if other != 7 else 2
        out.append(Pair(f"{a}+{b}=", "".join(map(str, good)), "".join(map(str, bad))))
    return out


def test_bradley_terry_loss_hand_value():
    c, r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (
        -torch.nn.functional.logsigmoid(torch.tensor(1.0 - 0.5))
        - torch.nn.functional.logsigmoid(torch.tensor(-2.0 - 0.5))
        + 0.1 * (1.0 + 4.0)
    ) / 2
    loss, metrics = bradley_terry(c, r, BradleyTerryOptions(margin=0.5, center=0.1))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6) and metrics["accuracy"] == 0.5


def test_reward_model_learns_saves_and_scores_as_a_reward(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model, tok = load_reward_model(tiny_model_dir)
    config = build(
        RMConfig,
        {
            "model": tiny_model_dir,
            "batch_size": 16,
            "steps": 80,
            "learning_rate": 3e-3,
            "max_length": 16,
            "progress": False,
        },
    )
    train, held = pairs(200, 0), pairs(60, 1)
    trainer = RewardModelTrainer(model, tok, config, train, held)
    before = trainer.evaluate(held)
    for step in range(config.steps):
        row = trainer.step(step)
    assert row["eval_accuracy"] >= 0.9 > before + 0.2
    assert length_baseline_accuracy(held) == 0.5  # equal lengths: no signal in length
    model.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert loaded.config.num_labels == 1 and type(loaded).__name__ == "LlamaForSequenceClassification"
    reward = get_reward(f"rm:{tmp_path / 'rm'}")
    scored = reward([p.prompt for p in held], [p.chosen for p in held], [""] * len(held))
    against = reward([p.prompt for p in held], [p.rejected for p in held], [""] * len(held))
    assert sum(c > r for c, r in zip(scored, against)) / len(held) >= 0.9


def test_a_causal_lm_folder_is_refused_as_a_reward(tiny_model_dir):
    with pytest.raises(UserError, match="is not a reward model"):
        get_reward(f"rm:{tiny_model_dir}")


def test_length_baseline():
    assert length_baseline_accuracy(
        [Pair("p", "long answer", "short"), Pair("p", "a", "bb"), Pair("p", "ab", "cd")]
    ) == pytest.approx(1.5 / 3)
