"""LoRA through PEFT for sft, rm, preference and rl: only the adapters (and a reward model's head) train, the
reference is the base with the adapter off, the adapter saves in PEFT's format and, with --merge, as a merged Hugging
Face folder whose logits equal the adapter model's; a resumed run with an adapter is bitwise exact."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from divalign.cli import main
from divalign.models import load_causal_lm, runtime_of
from divalign.models.adapters import AdapterOff, add_lora, load_adapter
from divalign.models.runtime import configure, fast_path_blocker

DIGITS = "def score(completion, answer):\n    return sum(ch.isdigit() for ch in completion) / 6\n"
RL = ["rl", "--task", "arithmetic", "--reward", "digits:score", "--reward-workers", "1", "--prompts-per-step", "4",
      "--num-generations", "4", "--max-new-tokens", "6", "--learning-rate", "1e-2", "--lora.r", "4", "--no-progress",
      "--threads", "1"]


def run(*argv):
    assert main([str(a) for a in argv]) == 0


def test_the_reference_is_the_base_with_the_adapter_off_and_the_fast_path_steps_aside(tiny_model_dir):
    base, tok = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
    adapted = add_lora(base, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter
        on, off = adapted(input_ids=ids).logits, AdapterOff(adapted)(input_ids=ids).logits
    assert not torch.allclose(on, before)
    torch.testing.assert_close(off, before)
    assert list(AdapterOff(adapted).parameters()) == []  # no second copy, nothing to place or freeze
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == {
        n for n, _ in adapted.named_parameters() if "lora_" in n}
    assert fast_path_blocker(adapted) == "the model carries adapters (PEFT)"
    assert not configure(adapted).lean and not runtime_of(AdapterOff(adapted)).lean


def test_rl_with_lora_saves_the_adapter_and_a_merged_model_with_its_logits(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "digits.py").write_text(DIGITS)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    run(*RL, "--model", tiny_model_dir, "--steps", 3, "--merge", "--output-dir", out)
    assert (out / "model" / "adapter_config.json").exists() and not (out / "model" / "config.json").exists()
    base, tok = load_causal_lm(tiny_model_dir)
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)
    merged, _ = load_causal_lm(out / "model-merged")
    adapted = load_adapter(load_causal_lm(tiny_model_dir)[0], out / "model")
    ids = torch.tensor([tok("12+34=")["input_ids"]])
    with torch.no_grad():
        merged_logits, adapted_logits = merged(input_ids=ids).logits, adapted(input_ids=ids).logits
        base_logits = base(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-4  # the adapter learnt something
    assert max(json.loads(line)["grad_norm"] for line in (out / "metrics.jsonl").read_text().splitlines()) > 0


def test_resuming_a_run_with_an_adapter_is_bitwise_exact(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "digits.py").write_text(DIGITS)
    monkeypatch.chdir(tmp_path)
    args = [*RL, "--model", tiny_model_dir, "--steps", 4, "--objective", "ppo"]  # with PPO's value head
    run(*args, "--output-dir", tmp_path / "straight")
    run(*args, "--output-dir", tmp_path / "resumed", "--save-every", 2)
    shutil.rmtree(tmp_path / "resumed" / "model")  # as if killed after the checkpoint of step 2
    run(*args, "--output-dir", tmp_path / "resumed", "--resume")
    a = load_file(tmp_path / "straight" / "model" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [(tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("straight", "resumed")]
    strip = [[{k: v for k, v in json.loads(r).items() if not k.endswith("_s")} for r in part] for part in rows]
    assert strip[0] == strip[1]


@pytest.mark.parametrize("command,data,extra", [
    ("sft", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(8)], []),
    ("rm", [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(10)], []),
    ("preference", [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(10)],
     ["--no-precompute-reference"]),
])
def test_offline_commands_train_adapters(tmp_path, tiny_model_dir, command, data, extra):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    out = tmp_path / "run"
    run(command, "--model", tiny_model_dir, "--data", path, "--steps", 3, "--batch-size", 4, "--learning-rate", 1e-2,
        "--lora.r", 2, "--lora.target-modules", "q_proj,v_proj", "--merge", "--no-progress", *extra,
        "--output-dir", out)
    adapter = load_file(out / "model" / "adapter_model.safetensors")
    assert any("q_proj" in k for k in adapter) and not any("k_proj" in k for k in adapter)
    if command == "rm":
        assert any("score" in k for k in adapter)  # the reward model's head trains with the adapters
    assert (out / "model-merged" / "config.json").exists()
