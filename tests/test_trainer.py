"""The online trainer in-process on tiny real models: one RL step really updates, accumulation is exact, and
architectures without the lean decoder go through the generic path."""

import math

import pytest
import torch

from divalign.charlm import build_char_tokenizer
from divalign.config import build
from divalign.data.prompts import DatasetPrompts, Example
from divalign.generation import HFDecoder
from divalign.models import frozen_copy, load_causal_lm, save_model
from divalign.rewards import PerSample
from divalign.trainers.online import OnlineTrainer, RLConfig


def digits(completion, answer):
    return sum(c.isdigit() for c in completion) / 6


def make_trainer(model, tok, **over):
    values = {
        "model": "in-memory",
        "prompts_per_step": 3,
        "num_generations": 4,
        "max_new_tokens": 6,
        "learning_rate": 1e-3,
        "progress": False,
        **over,
    }
    cfg = build(RLConfig, values)
    source = DatasetPrompts([Example(f"{i}+{i}=", str(2 * i)) for i in range(10)], seed=0)
    return OnlineTrainer(cfg, model, tok, source, PerSample(digits), reference=frozen_copy(model))


@pytest.mark.parametrize("objective", ["grpo", "fgrpo"])
def test_a_step_logs_finite_metrics_and_changes_the_weights(tiny_model_dir, objective):
    model, tok = load_causal_lm(tiny_model_dir)
    before = [p.detach().clone() for p in model.parameters()]
    row = make_trainer(model, tok, objective=objective).step(0)
    assert row["reward_std"] > 0
    for key in (
        "reward_mean",
        "kl",
        "entropy",
        "completion_length",
        "clip_fraction",
        "grad_norm",
        "loss",
        "generate_s",
        "score_s",
        "reference_s",
        "forward_backward_s",
        "optimizer_s",
    ):
        assert math.isfinite(row[key]), key
    if objective == "fgrpo":
        assert math.isfinite(row["divergence_estimate"])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.filterwarnings(r"ignore:Seems like `optimizer.step\(\)` has been overridden")
@pytest.mark.parametrize(
    "objective,options",
    [("grpo", {"grpo": {"aggregation": "token_mean"}}), ("fgrpo", {"fgrpo": {"divergence": "pearson"}})],
)
def test_gradient_accumulation_equals_one_big_batch(tiny_model_dir, objective, options):
    results = []
    for micro in (0, 1):
        model, tok = load_causal_lm(tiny_model_dir)
        trainer = make_trainer(model, tok, objective=objective, micro_batch_prompts=micro, max_grad_norm=0.0, **options)
        grads = []
        step = trainer.optimization.optimizer.step

        def record_then_step(*args, **kwargs):  # observe the accumulated gradient the optimizer receives
            grads.extend(p.grad.detach().clone() for p in model.parameters())
            return step(*args, **kwargs)

        trainer.optimization.optimizer.step = record_then_step
        row = trainer.step(0)
        results.append((grads, row))
    (g_full, r_full), (g_micro, r_micro) = results
    assert r_full["loss"] == pytest.approx(r_micro["loss"], abs=1e-6)
    assert r_full["grad_norm"] == pytest.approx(r_micro["grad_norm"], rel=1e-5)
    for a, b in zip(g_full, g_micro):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_generic_path_trains_a_non_llama_model(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_char_tokenizer("0123456789+-=")
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    save_model(GPT2LMHeadModel(config), tok, tmp_path)
    model, tok = load_causal_lm(tmp_path)
    trainer = make_trainer(model, tok, objective="fgrpo")
    assert isinstance(trainer.sampler.decoder, HFDecoder)
    before = [p.detach().clone() for p in model.parameters()]
    row = trainer.step(0)
    assert math.isfinite(row["loss"]) and row["reward_std"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
