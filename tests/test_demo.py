import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}


def run_demo(out, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "divalign", "demo", "--output-dir", str(out), "--no-progress", *map(str, args)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def test_small_demo_writes_every_artefact(tmp_path):
    out = tmp_path / "demo"
    proc = run_demo(
        out,
        "--demonstrations",
        64,
        "--sft-steps",
        10,
        "--rl-steps",
        3,
        "--eval-problems",
        20,
        "--prompts-per-step",
        4,
        "--objective",
        "fgrpo",
        "--divergence",
        "js",
        "--threads",
        2,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    for key in ("pass1_before", "pass1_after", "pass8_before", "pass8_after", "pass1_control", "reward_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["eval_problems"] == 20 and summary["divergence"] == "js"
    assert "greedy pass@1" in proc.stdout and "SFT continued (control)" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # the control ran beside RL in its own process, from the saved SFT model, and saved its own
    control_rows = (out / "control" / "metrics.jsonl").read_text().splitlines()
    assert len(control_rows) >= 1 and summary["seconds"]["control"] > 0
    assert (out / "control" / "model" / "model.safetensors").exists()
    for png in ("reward.png", "kl.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.decode(tok("12+34=")["input_ids"], skip_special_tokens=True) == "12+34="


@pytest.mark.slow
def test_default_demo_raises_greedy_pass1_by_15_points(tmp_path):
    """The full default demo (several minutes): RL must beat the SFT model by at least 15 points."""
    out = tmp_path / "demo"
    proc = run_demo(out, timeout=1800)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_problems"] >= 200
    assert summary["pass1_after"] - summary["pass1_before"] >= 0.15, summary
