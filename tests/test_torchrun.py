"""The command line under torchrun (2 CPU processes, gloo): online RL gives the rows a single process gives, with
DDP and with FSDP2, records the number of processes, and resumes on another number of processes; the offline
commands train and save a loadable model. Slower than most tests: each run starts two interpreters."""

import json
import os
import subprocess
import sys

import pytest

from divalign.models import load_causal_lm

DIGITS = "def score(completion, answer):\n    return sum(ch.isdigit() for ch in completion) / 6\n"
RL = ["rl", "--task", "arithmetic", "--reward", "digits:score", "--reward-workers", "1", "--steps", "4",
      "--prompts-per-step", "4", "--num-generations", "4", "--max-new-tokens", "6", "--learning-rate", "1e-3",
      "--no-progress", "--threads", "1"]


def divalign(*args, processes=1, cwd=None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "divalign", *map(str, args)]
    proc = subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def same_rows(a, b):
    for x, y in zip(a, b, strict=True):
        for key in ("reward_mean", "loss", "grad_norm", "kl", "completion_length"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)


def test_rl_on_two_processes_equals_one_and_resumes_on_one(tmp_path, tiny_model_dir):
    (tmp_path / "digits.py").write_text(DIGITS)
    args = [*RL, "--model", tiny_model_dir]
    divalign(*args, "--output-dir", tmp_path / "one", cwd=tmp_path)
    divalign(*args, "--output-dir", tmp_path / "ddp", "--save-every", 2, processes=2, cwd=tmp_path)
    divalign(*args, "--output-dir", tmp_path / "fsdp", "--sharding", "fsdp", processes=2, cwd=tmp_path)
    one = rows(tmp_path / "one")
    assert [r["world_size"] for r in one] == [1] * 4 and max(r["grad_norm"] for r in one) > 0
    for name in ("ddp", "fsdp"):
        assert [r["world_size"] for r in rows(tmp_path / name)] == [2] * 4
        same_rows(one, rows(tmp_path / name))
        load_causal_lm(tmp_path / name / "model")
    assert "# world_size: 2" in (tmp_path / "ddp" / "config.yaml").read_text()
    # the two-process run's checkpoint at step 2, continued by one process
    (tmp_path / "ddp" / "model").rename(tmp_path / "ddp-final")
    divalign(*args, "--output-dir", tmp_path / "ddp", "--resume", cwd=tmp_path)
    resumed = rows(tmp_path / "ddp")
    assert [r["world_size"] for r in resumed] == [2, 2, 1, 1]
    same_rows(one, resumed)


@pytest.mark.parametrize("command,data", [
    ("sft", [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(8)]),
    ("rm", [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(10)]),
    ("preference", [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(10)]),
])
def test_offline_commands_train_on_two_processes(tmp_path, tiny_model_dir, command, data):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    args = [command, "--model", tiny_model_dir, "--data", path, "--steps", 2, "--batch-size", 4, "--no-progress",
            "--threads", 1]
    divalign(*args, "--output-dir", tmp_path / "one")
    divalign(*args, "--output-dir", tmp_path / "two", processes=2)
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["world_size"] for r in two] == [2, 2]
    for x, y in zip(one, two, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["grad_norm"] == pytest.approx(y["grad_norm"],
                                                                                                   rel=1e-5)
    assert (tmp_path / "two" / "model" / "config.json").exists()
