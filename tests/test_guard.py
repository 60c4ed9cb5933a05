"""A run never silently goes wrong: non-finite updates are left out and counted, a run that keeps producing them
stops without writing a model, collapse is warned about, and user rewards run bounded in worker processes."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from divalign.charlm import build_char_tokenizer, tiny_llama
from divalign.config import build
from divalign.errors import RunFailed
from divalign.rewards import RewardOptions, get
from divalign.sandbox import Pool
from divalign.trainers.health import RunWatch
from divalign.trainers.loop import check_finite
from divalign.trainers.optim import Optimization
from divalign.trainers.options import OptimizerOptions

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def divalign(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "divalign", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600, cwd=cwd)


def one_line(proc, code):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("divalign: error: ")]
    assert proc.returncode == code and len(lines) == 1, proc.stderr
    return lines[0]


def small_model():
    tok = build_char_tokenizer("0123456789+-=")
    return tiny_llama(tok, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_a_non_finite_step_changes_neither_weights_nor_optimizer_state(poison):
    model = small_model()
    opt = Optimization(model, OptimizerOptions(learning_rate=1e-2, lr_schedule="linear"), total_steps=10)
    ids = torch.tensor([[1, 2, 3, 4]])
    model(input_ids=ids).logits.sum().backward()
    assert opt.step(loss=1.0)["skipped_updates"] == 0  # a real update first, so the optimizer has state
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.optimizer.state[opt.params[0]].items()}
    lr = opt.scheduler.get_last_lr()[0]
    loss = model(input_ids=ids).logits.sum()
    if poison == "gradient":
        loss = loss * torch.tensor(float("inf"))
    loss.backward()
    row = opt.step(loss=float("nan") if poison == "loss" else 1.0)
    assert row["skipped_updates"] == 1 and row["skip_reason"] == f"non-finite {poison if poison == 'loss' else 'gradient norm'}"
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(torch.equal(v, opt.optimizer.state[opt.params[0]][k]) for k, v in state.items())
    assert opt.scheduler.get_last_lr()[0] == lr and all(p.grad is None for p in opt.params)


def test_the_watch_stops_after_consecutive_skips_and_warns_of_collapse(capsys):
    watch = RunWatch(max_consecutive_skips=3, vocab_size=16)
    rows = [{"step": 1, "skipped_updates": 1, "skip_reason": "non-finite loss"}, {"step": 2, "skipped_updates": 0},
            {"step": 3, "skipped_updates": 1, "skip_reason": "non-finite loss"},
            {"step": 4, "skipped_updates": 1, "skip_reason": "non-finite loss"}]
    for row in rows:
        watch.see(row)
    assert rows[-1]["skipped_steps"] == 3 and "update left out" in capsys.readouterr().err
    with pytest.raises(RunFailed, match="stopped at step 5: 3 steps in a row without an update"):
        watch.see({"step": 5, "skipped_updates": 1, "skip_reason": "non-finite loss"})

    watch = RunWatch(3, vocab_size=16)
    low = {"entropy": 1.0, "grad_norm": 0.5, "kl": 0.01}
    for step in range(12):
        watch.see({"step": step, "skipped_updates": 0, **low})
    row = {"step": 12, "skipped_updates": 0, "entropy": math.log(16), "grad_norm": 0.5, "kl": 0.5}
    watch.see(row)
    assert "at its maximum" in row["warning"] and "KL" not in row["warning"]  # 0.5 nats is no jump (< 1)
    jump = {"step": 13, "skipped_updates": 0, "entropy": math.log(16), "grad_norm": 0.0, "kl": 5.0}
    watch.see(jump)
    assert "KL to the reference jumped to 5" in jump["warning"] and "entropy" not in jump["warning"]  # once only
    for step in (14, 15):
        row = {"step": step, "skipped_updates": 0, "grad_norm": 0.0}
        watch.see(row)
    assert "gradient norm exactly 0 for 3 steps" in row["warning"]
    fresh = RunWatch(3, vocab_size=16)  # an untrained model starts at maximal entropy: no collapse
    start = {"step": 1, "skipped_updates": 0, "entropy": math.log(16)}
    fresh.see(start)
    assert "warning" not in start


def test_non_finite_weights_are_never_saved():
    model = small_model()
    check_finite(model, 1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(RunFailed, match="weights are not finite after step 3: nothing saved"):
        check_finite(model, 3)


def test_a_diverging_run_stops_with_one_line_and_writes_no_model(tmp_path, tiny_model_dir):
    """A learning rate of 1e30 sends the weights to infinity in one update: the next steps' losses are not finite,
    so their updates are left out until the run stops; with a checkpoint due, saving them is refused at once."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "completion": str(i + 1)}) + "\n" for i in range(32)))
    common = ["sft", "--model", tiny_model_dir, "--data", data, "--steps", 8, "--learning-rate", 1e30,
              "--max-grad-norm", 0, "--no-progress"]
    out = tmp_path / "run"
    line = one_line(divalign(*common, "--output-dir", out), 1)
    assert "stopped at step 4: 3 steps in a row without an update (non-finite loss)" in line
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 2, 3] and not (out / "model").exists()
    saving = tmp_path / "saving"
    line = one_line(divalign(*common, "--output-dir", saving, "--save-every", 1), 1)
    assert "weights are not finite after step 1: nothing saved" in line
    assert not (saving / "model").exists() and not list((saving / "checkpoints").glob("step-*"))
    assert "learning_rate must be a finite number > 0" in one_line(
        divalign("sft", "--model", tiny_model_dir, "--data", data, "--output-dir", tmp_path / "inf",
                 "--learning-rate", "inf"), 2)
    assert not (tmp_path / "inf").exists()


# --------------------------------------------------------------------------- rewards in worker processes

HOSTILE = '''
import os, sys, time

def swallows(completion, answer):
    while True:
        try:
            time.sleep(0.05)
        except BaseException:
            pass

def exits(completion, answer):
    sys.exit(3)

def dies(completion, answer):
    os._exit(7)

def text(completion, answer):
    return "0.75"

def nan(completion, answer):
    return float("nan")

def fine(completion, answer):
    return float(len(completion))
'''


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    monkeypatch.chdir(tmp_path)


def test_a_worker_is_killed_at_the_timeout_and_replaced_whatever_the_function_does(hostile):
    for name, reason in [("swallows", "ran over 0.5s"), ("exits", "raised SystemExit: 3"), ("dies", "exited (code 7)")]:
        pool = Pool(f"hostile:{name}", workers=2, timeout=0.5)
        outcomes = pool.map([("a", ""), ("b", "")])
        assert [o.error for o in outcomes] == [reason, reason], name
        pool.close()
    pool = Pool("hostile:fine", workers=1, timeout=2)
    assert [o.value for o in pool.map([("ab", ""), ("abc", "")])] == [2.0, 3.0]
    pool.close()
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Pool("hostile:fine", workers=1, timeout=0)


def test_a_reward_that_is_not_a_finite_number_is_an_error_or_zero_and_counted(hostile):
    for name, shown in [("text", "'0.75' (str)"), ("nan", "nan (float)")]:
        with pytest.raises(RunFailed, match=re.escape(f"reward hostile:{name} returned {shown}, not a finite number "
                                                      "for completion 0 ('x'); --reward-invalid zero")):
            get(f"hostile:{name}", RewardOptions(reward_workers=1))(["p", "p"], ["x", "y"], ["", ""])
        lenient = get(f"hostile:{name}", RewardOptions(reward_workers=1, reward_invalid="zero",
                                                       reward_max_failures=1.0))
        assert lenient(["p"], ["x"], [""]) == [0.0] and lenient.failures == 1


def test_reward_options_are_checked(tmp_path):
    for values, message in [({"reward_timeout": 0}, "reward_timeout must be a number of seconds > 0"),
                            ({"reward_timeout": -1.0}, "reward_timeout must be"),
                            ({"reward_invalid": "ignore"}, "reward_invalid: expected one of error, zero"),
                            ({"reward_max_failures": 2.0}, "reward_max_failures must be in")]:
        with pytest.raises(Exception, match=message):
            build(RewardOptions, values)


def test_rl_stops_on_a_reward_that_fails_every_call(tmp_path, tiny_model_dir, hostile):
    out = tmp_path / "run"
    proc = divalign("rl", "--model", tiny_model_dir, "--output-dir", out, "--task", "arithmetic", "--steps", 3,
                    "--prompts-per-step", 2, "--num-generations", 2, "--max-new-tokens", 3, "--reward",
                    "hostile:exits", "--reward-workers", 1, "--no-progress", cwd=tmp_path)
    assert "hostile:exits: 4 of 4 calls failed (4 raised SystemExit: 3)" in one_line(proc, 1)
    assert not (out / "model").exists()
