"""Precision, devices and memory options on CPU: bf16 autocast against fp32 within bf16's tolerance with the
weights and optimizer state kept fp32, fp16 loss scaling through an overflow, gradient checkpointing's gradients
equal to the plain backward, the fast path stepping aside in reduced precision, and ``--device cuda`` without a
GPU as one line."""

import json

import pytest
import torch
from safetensors.torch import load_file

from divalign.cli import main
from divalign.data.tokens import SequenceBatch, pad
from divalign.models import completion_logprobs, configure, load_causal_lm
from divalign.models.runtime import fast_path_blocker
from divalign.parallel import World
from divalign.trainers.engine import Engine
from divalign.trainers.optim import Optimization
from divalign.trainers.options import OptimizerOptions, TrainingDeviceOptions

PROMPTS = ["12+34=", "7*8=", "100-1="]
COMPLETIONS = ["46", "56", "99"]


def batch_of(tok) -> SequenceBatch:
    prompts, _ = pad([tok(p)["input_ids"] for p in PROMPTS], tok.pad_token_id, left=True)
    completions, mask = pad([tok(c)["input_ids"] for c in COMPLETIONS], tok.pad_token_id)
    prompt_mask = (prompts != tok.pad_token_id).long()
    return SequenceBatch(torch.cat([prompts, completions], 1), torch.cat([prompt_mask, mask], 1), prompts.shape[1])


def hf_model(folder):
    model, tok = load_causal_lm(folder)
    configure(model, fast_path=False)
    return model, tok


def test_bf16_log_probabilities_and_gradients_are_fp32_within_bf16_tolerance(tiny_model_dir):
    model, tok = hf_model(tiny_model_dir)
    batch = batch_of(tok)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.zero_grad()
        engine = Engine([model], World(), TrainingDeviceOptions(dtype={torch.float32: "fp32"}.get(dtype, "bf16")))
        with engine.autocast():
            logprobs, _ = completion_logprobs(model, batch)
        assert logprobs.dtype == torch.float32  # log-softmax in fp32 whatever the compute precision
        logprobs.sum().backward()
        results[dtype] = logprobs.detach(), [p.grad.clone() for p in model.parameters()]
    (lp32, g32), (lp16, g16) = results[torch.float32], results[torch.bfloat16]
    mask = batch.completion_mask.bool()
    assert not torch.equal(lp32[mask], lp16[mask])  # bf16 really ran
    torch.testing.assert_close(lp16[mask], lp32[mask], atol=0.05, rtol=0.02)  # bf16 keeps 8 mantissa bits
    assert all(p.dtype == torch.float32 for p in model.parameters())
    flat32, flat16 = torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16])
    assert torch.nn.functional.cosine_similarity(flat32, flat16, dim=0) > 0.99
    assert (flat16.norm() / flat32.norm() - 1).abs() < 0.05


def test_the_fast_path_steps_aside_in_reduced_precision_and_with_checkpointing(tiny_model_dir):
    model, _ = load_causal_lm(tiny_model_dir)
    assert fast_path_blocker(model) is None and configure(model).lean
    assert fast_path_blocker(model, torch.bfloat16) == "the run computes in reduced precision"
    assert not configure(model, dtype=torch.bfloat16).lean
    assert not configure(model, gradient_checkpointing=True).lean


def test_gradient_checkpointing_gives_the_plain_backwards_gradients(tiny_model_dir):
    grads = {}
    for checkpointing in (False, True):
        model, tok = hf_model(tiny_model_dir)
        model.train()
        Engine([model], World(), TrainingDeviceOptions(dtype="fp32", gradient_checkpointing=checkpointing))
        assert model.is_activation_checkpointing == checkpointing
        logprobs, _ = completion_logprobs(model, batch_of(tok))
        logprobs.sum().backward()
        grads[checkpointing] = [p.grad for p in model.parameters()]
    for plain, recomputed in zip(grads[False], grads[True]):
        torch.testing.assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


def test_fp16_loss_scaling_leaves_out_an_overflowing_step_and_lowers_the_scale(tiny_model_dir):
    model, tok = hf_model(tiny_model_dir)
    engine = Engine([model], World(), TrainingDeviceOptions(dtype="fp16"))
    assert engine.scaler is not None and engine.scaler.get_scale() == 2.0**16
    engine.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # far beyond fp16's range: the backward overflows
    optimization = Optimization(model, OptimizerOptions(learning_rate=1e-2, warmup_steps=0), 10, engine)
    batch = batch_of(tok)

    def step():
        def one_pass():
            logprobs, _ = completion_logprobs(model, batch)
            return -logprobs.sum(), {}
        engine.accumulate([one_pass])
        return optimization.step(1.0)

    before = [p.detach().clone() for p in model.parameters()]
    row = step()
    assert row["fp16_overflows"] == 1 and row["skipped_updates"] == 0 and row["loss_scale"] == 2.0**39
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # no update
    assert all(p.grad is None for p in model.parameters())
    for _ in range(40):  # the scale halves until the gradients fit, then the weights move
        row = step()
        if "fp16_overflows" not in row:
            break
    assert "fp16_overflows" not in row and row["grad_norm"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(s.dtype == torch.float32 for state in optimization.optimizer.state.values()
               for s in state.values() if s.dim() > 0)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_sft_in_reduced_precision_trains_and_writes_fp32_weights(tmp_path, tiny_model_dir, dtype):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in zip(PROMPTS, COMPLETIONS)))
    out = tmp_path / "run"
    argv = ["sft", "--model", tiny_model_dir, "--data", data, "--steps", 8, "--batch-size", 3, "--learning-rate",
            3e-3, "--warmup-steps", 0, "--dtype", dtype, "--output-dir", out, "--no-progress"]
    assert main([str(a) for a in argv]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped_updates"] == 0 for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
    weights = load_file(out / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    assert f"dtype: {dtype}" in (out / "config.yaml").read_text()


def test_asking_for_a_gpu_that_is_not_there_is_one_line(tmp_path, tiny_model_dir, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    code = main(["sft", "--model", tiny_model_dir, "--data", str(tmp_path / "none.jsonl"), "--device", "cuda",
                 "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err == ["divalign: error: config: device: cuda was asked for, but this torch sees no GPU (use --device cpu or auto)"]


def test_eval_in_bf16_agrees_with_fp32(tmp_path, tiny_model_dir):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": p + c}) + "\n" for p, c in zip(PROMPTS, COMPLETIONS)))
    results = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        assert main(["eval", "--model", tiny_model_dir, "--perplexity-data", str(texts), "--dtype", dtype,
                     "--output-dir", str(out), "--no-progress"]) == 0
        results[dtype] = json.loads((out / "results.json").read_text())["perplexity"]
    assert results["bf16"]["tokens"] == results["fp32"]["tokens"]
    assert results["bf16"]["nll_per_token"] != results["fp32"]["nll_per_token"]  # bf16 really ran
    assert results["bf16"]["nll_per_token"] == pytest.approx(results["fp32"]["nll_per_token"], rel=0.01)


DIGITS = "def score(completion, answer):\n    return sum(ch.isdigit() for ch in completion) / 6\n"


def test_sampling_in_bf16_logs_the_mismatch_and_tis_weighs_it(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "digits.py").write_text(DIGITS)
    monkeypatch.chdir(tmp_path)
    common = ["rl", "--model", tiny_model_dir, "--task", "arithmetic", "--reward", "digits:score", "--reward-workers",
              "1", "--objective", "grpo", "--steps", "2", "--prompts-per-step", "4", "--num-generations", "4",
              "--max-new-tokens", "6", "--no-progress"]
    rows = {}
    for name, extra in {"plain": [], "bf16": ["--sampling-dtype", "bf16"],
                        "tis": ["--sampling-dtype", "bf16", "--tis-cap", "1.0001", "--tis-mode", "mask"]}.items():
        assert main([*common, *extra, "--output-dir", str(tmp_path / name)]) == 0
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert "mismatch_kl" not in rows["plain"][0]
    assert all(0 < r["mismatch_kl"] < 1e-3 for r in rows["bf16"])  # bf16 sampling is close to, not equal to fp32
    assert all(0 < r["tis_cut_fraction"] < 1 for r in rows["tis"])  # a cap this tight masks some tokens
    assert rows["tis"][0]["loss"] != rows["bf16"][0]["loss"]


@pytest.mark.parametrize("extra,message", [
    (["--tis-cap", "0.5"], "tis_cap must be 0 (off) or > 1"),
    (["--tis-cap", "2", "--objective", "fgrpo"], "objective 'fgrpo' does not apply importance weights"),
    (["--sampling-dtype", "fp8"], "sampling_dtype: expected one of auto, fp32, bf16, fp16"),
])
def test_tis_options_are_checked(tmp_path, tiny_model_dir, capsys, extra, message):
    code = main(["rl", "--model", tiny_model_dir, "--task", "arithmetic", *extra, "--output-dir", str(tmp_path / "r")])
    assert code == 2 and message in capsys.readouterr().err
