"""divalign's GSPO, CISPO, SAPO, GMPO and the bias-corrected KL against TRL 1.16's own loss code on the same
inputs (tests/trl_grpo_capture.py): loss and gradient with respect to every per-token log-probability, in float64,
to 1e-12. The stored capture is checked always; a fresh one when TRL is installed."""

import importlib.util
import json
import tempfile

import pytest
import torch
from trl_grpo_capture import CONFIGS, REFERENCE, capture, inputs

from divalign import objectives
from divalign.objectives import make_batch

STORED = {record["name"]: record for record in json.loads(REFERENCE.read_text())["records"]}


def divalign_loss_and_grad(objective: str, options: dict):
    data = inputs()
    logps = data["logps"].clone().requires_grad_()
    batch = make_batch(logprobs=logps, old_logprobs=data["old_logps"], ref_logprobs=data["ref_logps"],
                       mask=data["mask"], advantages=data["advantages"], rewards=torch.zeros(4, dtype=torch.float64),
                       group_ids=torch.tensor([0, 0, 1, 1]))
    obj = objectives.get(objective)
    loss, _ = obj.loss(batch, obj.make_options(options))
    loss.backward()
    return float(loss.detach()), logps.grad * data["mask"]


def check(record: dict, objective: str, options: dict):
    loss, grad = divalign_loss_and_grad(objective, options)
    assert loss == pytest.approx(record["loss"], abs=1e-12, rel=1e-12), record["name"]
    torch.testing.assert_close(grad, torch.tensor(record["grad"], dtype=torch.float64), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("name,trl_config,objective,options", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_against_stored_trl_values(name, trl_config, objective, options):
    record = STORED[name]
    assert any(abs(g) > 1e-3 for row in record["grad"] for g in row)  # a capture with a gradient to compare
    check(record, objective, options)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed (pip install '.[bench]')")
@pytest.mark.parametrize("name,trl_config,objective,options", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_against_live_trl(name, trl_config, objective, options):
    with tempfile.TemporaryDirectory() as workdir:
        check({"name": name, **capture(trl_config, workdir)}, objective, options)
