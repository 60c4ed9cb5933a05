"""divalign's DPO, IPO and f-DPO against TRL's DPOTrainer on the same inputs: loss and gradient to 1e-6.

The inputs are the per-token log-probabilities TRL's policy and reference produced on a real batch
(tests/trl_dpo_capture.py). The stored capture is checked always; a fresh capture when TRL is installed.
"""

import importlib.util
import json
import tempfile

import pytest
import torch
from trl_dpo_capture import CONFIGS, REFERENCE, capture

from divalign import objectives
from divalign.objectives import PairBatch

F_DIVERGENCE = {
    "reverse_kl": "reverse_kl",
    "forward_kl": "forward_kl",
    "js_divergence": "js",
    "alpha_divergence": "alpha",
}


def divalign_loss_and_grad(record):
    config = record["config"]
    token_logps = torch.tensor(record["policy_token_logps"], dtype=torch.float32, requires_grad=True)
    reference = torch.tensor(record["reference_token_logps"], dtype=torch.float32)
    mask = torch.tensor(record["completion_mask"], dtype=torch.float32)
    logps, ref = (token_logps * mask).sum(1), (reference * mask).sum(1)
    lengths = mask.sum(1)
    n = logps.shape[0] // 2  # TRL stacks [chosen..., rejected...]
    batch = PairBatch(logps[:n], logps[n:], ref[:n], ref[n:], lengths[:n], lengths[n:], num_pairs=n)
    if config["loss_type"] == "ipo":
        name, options = "ipo", {"beta": config["beta"]}
    elif config["f_divergence_type"] == "reverse_kl":
        name, options = "dpo", {"beta": config["beta"]}
    else:
        name = "fdpo"
        options = {
            "beta": config["beta"],
            "regularizer": F_DIVERGENCE[config["f_divergence_type"]],
            "alpha": config.get("f_alpha_divergence_coef", 0.5),
        }
    obj = objectives.get(name)
    loss, _ = obj.loss(batch, obj.make_options(options))
    loss.backward()
    return loss.item(), token_logps.grad * mask


def check(record):
    loss, grad = divalign_loss_and_grad(record)
    assert loss == pytest.approx(record["loss"], abs=1e-6), record["config"]
    trl_grad = torch.tensor(record["grad_policy_token_logps"]) * torch.tensor(record["completion_mask"])
    torch.testing.assert_close(grad, trl_grad, atol=1e-6, rtol=1e-5)


STORED = json.loads(REFERENCE.read_text())["records"]


@pytest.mark.parametrize("record", STORED, ids=[str(r["config"]) for r in STORED])
def test_against_stored_trl_values(record):
    assert record["loss"] > 0 and any(any(abs(g) > 1e-4 for g in row) for row in record["grad_policy_token_logps"])
    check(record)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed (pip install '.[bench]')")
@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_against_live_trl(config):
    with tempfile.TemporaryDirectory() as workdir:
        check(capture(config, workdir))
