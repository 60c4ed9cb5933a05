"""The command line end to end, in real subprocesses: bad input, training, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
# A reward with variance even for an untrained model, so every step really updates the weights.
DIGITS_REWARD = "def digits(completion, answer):\n    return sum(c.isdigit() for c in completion) / 6\n"


@pytest.fixture(autouse=True)
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "user_rewards.py").write_text(DIGITS_REWARD)
    monkeypatch.setitem(ENV, "PYTHONPATH", os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")]))


def divalign(*args, check=False, **kw):
    proc = subprocess.run(
        [sys.executable, "-m", "divalign", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=600, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def rl_args(model, out, *extra):
    return [
        "rl",
        "--model",
        model,
        "--output-dir",
        out,
        "--task",
        "arithmetic",
        "--prompts-per-step",
        4,
        "--num-generations",
        4,
        "--max-new-tokens",
        6,
        "--learning-rate",
        1e-3,
        "--threads",
        1,
        "--reward",
        "user_rewards:digits",
        "--no-progress",
        *extra,
    ]


def assert_user_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("divalign: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20)))
    return path


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, tiny_model_dir, prompts_file):
    out = tmp_path / "out"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"prompt": "1+1=", "answer": "2"}\n{oops\n')
    no_field = tmp_path / "nofield.jsonl"
    no_field.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": "4"}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    not_lm = tmp_path / "t5"
    not_lm.mkdir()
    (not_lm / "config.json").write_text('{"model_type": "t5"}')
    base = ["rl", "--output-dir", out, "--no-progress"]
    cases = [
        (
            base + ["--model", tiny_model_dir, "--prompts", tmp_path / "missing.jsonl"],
            ["missing.jsonl", "does not exist"],
        ),
        (base + ["--model", tiny_model_dir, "--prompts", bad_json], ["bad.jsonl:2", "invalid JSON"]),
        (base + ["--model", tiny_model_dir, "--prompts", no_field], ["nofield.jsonl:2", "missing field 'prompt'"]),
        (base + ["--model", tiny_model_dir, "--prompts", empty], ["empty.jsonl", "no records"]),
        (base + ["--model", not_lm, "--prompts", prompts_file], ["'t5' model", "not a causal language model"]),
        (base + ["--model", tmp_path / "nomodel", "--prompts", prompts_file], ["nomodel", "does not exist"]),
        (
            base + ["--model", tiny_model_dir, "--prompts", prompts_file, "--fgrpo.divergence", "kullback"],
            ["unknown divergence 'kullback'", "kl, reverse_kl"],
        ),
        (
            base + ["--model", tiny_model_dir, "--prompts", prompts_file, "--objective", "ppo9"],
            ["unknown objective 'ppo9'"],
        ),
        (base + ["--model", tiny_model_dir, "--task", "poetry"], ["unknown task 'poetry'"]),
        (
            base + ["--model", tiny_model_dir, "--task", "arithmetic", "--reward", "nomodule:f"],
            ["cannot import module 'nomodule'"],
        ),
        (
            base + ["--model", tiny_model_dir, "--task", "arithmetic", "--reward", "user_rewards:nothing"],
            ["has no function 'nothing'"],
        ),
    ]
    for argv, fragments in cases:
        assert_user_error(divalign(*argv), *fragments)
        assert not out.exists(), argv
    config = tmp_path / "c.yaml"
    config.write_text("steps: 2\nfgrpo:\n  level: paragraph\n")
    assert_user_error(
        divalign("rl", "--config", config, "--model", tiny_model_dir, "--task", "arithmetic", "--output-dir", out),
        "fgrpo.level",
        "token, sequence",
    )
    assert_user_error(divalign("demo", "--output-dir", out, "--divergence", "bogus"), "unknown divergence 'bogus'")
    assert not out.exists()


def test_rl_run_writes_metrics_and_a_loadable_model(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    divalign(*rl_args(tiny_model_dir, out, "--steps", 3), check=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in (
        "reward_mean",
        "reward_std",
        "pass_rate",
        "kl",
        "completion_length",
        "divergence_estimate",
        "clip_fraction",
        "entropy",
        "generate_s",
        "score_s",
        "forward_backward_s",
        "optimizer_s",
    ):
        assert all(key in r and r[key] is not None for r in rows), key
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.equal(trained.lm_head.weight, initial.lm_head.weight)
    # A second run into the same folder is refused instead of overwriting it.
    assert_user_error(divalign(*rl_args(tiny_model_dir, out, "--steps", 3)), "already holds files")


def weights(folder):
    return load_file(str(Path(folder) / "model.safetensors"))


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_identical(tmp_path, tiny_model_dir):
    steps, every = ["--steps", 40], ["--save-every", 5]
    straight = tmp_path / "straight"
    divalign(*rl_args(tiny_model_dir, straight, *steps), check=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "divalign", *map(str, rl_args(tiny_model_dir, killed, *steps, *every))],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model").exists()
    resumed_from = latest.read_text().strip()

    divalign(*rl_args(tiny_model_dir, killed, *steps, *every, "--resume"), check=True)
    a, b = weights(straight / "model"), weights(killed / "model")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41)), resumed_from


def test_help_lists_every_option():
    proc = divalign("rl", "--help", check=True)
    for flag in (
        "--fgrpo.divergence",
        "--fgrpo.link",
        "--fgrpo.level",
        "--fgrpo.gamma-old",
        "--grpo.epsilon-high",
        "--grpo.aggregation",
        "--resume",
        "--save-every",
        "--micro-batch-prompts",
    ):
        assert flag in proc.stdout
    assert "canonical" in proc.stdout  # field docstrings become help text
