"""Run verl's own loss and advantage code (``verl.trainer.ppo.core_algos`` of verl 0.9.1) on fixed inputs and
record what it computed: DPPO-Binary-TV and -KL, PPO with dual clip, REINFORCE++ and REINFORCE++-baseline
advantages, the KL estimators with their straight-through variants, and the aggregation modes.

verl is not a dependency of divalign (it needs Ray, vLLM and more); its math module imports only torch, NumPy and
OmegaConf, so the generator loads it from an unpacked wheel with empty stand-ins for the distributed packages it
imports but these functions never call. The stored values are checked always (tests/test_verl_crosscheck.py).

Regenerate (from the repository root; needs network access to PyPI for the wheel and OmegaConf):

    pip download verl==0.9.1 --no-deps -d /tmp/verl && unzip -q /tmp/verl/verl-0.9.1-py3-none-any.whl -d /tmp/verl/x
    pip install --target /tmp/verl/deps omegaconf antlr4-python3-runtime==4.9.3 --no-deps
    python tests/verl_capture.py /tmp/verl/x /tmp/verl/deps
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).parent / "data" / "verl_reference.json"
STAND_INS = ("tensordict", "tensordict.tensorclass", "ray", "vllm", "orjson", "codetiming")


def inputs(dtype=torch.float64) -> dict:
    """Four responses of up to 6 tokens (lengths 6, 4, 5, 2; two prompts), log-ratios to the old policy over ±0.9,
    probabilities that move by up to 0.4 (inside and outside DPPO's regions), per-token advantages of both signs,
    scalar rewards, a per-token KL and a reference."""
    generator = torch.Generator().manual_seed(1)
    shape = (4, 6)
    old = torch.log(torch.rand(shape, generator=generator, dtype=dtype) * 0.9 + 0.05)
    logps = old + (torch.rand(shape, generator=generator, dtype=dtype) - 0.5) * 1.8
    logps = logps.clamp(max=-1e-3)
    ref = logps - (torch.rand(shape, generator=generator, dtype=dtype) - 0.5)
    mask = torch.zeros(shape, dtype=dtype)
    for row, length in enumerate((6, 4, 5, 2)):
        mask[row, :length] = 1
    token_advantages = (torch.rand(shape, generator=generator, dtype=dtype) - 0.5) * 4 * mask
    rewards = torch.tensor([1.0, 0.0, 0.25, 0.75], dtype=dtype)
    kl = (torch.rand(shape, generator=generator, dtype=dtype) * 0.2) * mask
    return {"logps": logps, "old_logps": old, "ref_logps": ref, "mask": mask, "token_advantages": token_advantages,
            "rewards": rewards, "kl": kl, "group_ids": [0, 0, 1, 1]}


def _stand_in_attribute(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})


def holed_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` with observation tokens inside the first three responses (masked positions between real tokens)."""
    holes = mask.clone()
    holes[0, 2:4] = 0
    holes[1, 1] = 0
    holes[2, 1:3] = 0
    return holes


def load_core_algos(source: str, deps: str):
    sys.path[:0] = [source, deps]
    for name in STAND_INS:
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            module.__path__ = []
            module.__getattr__ = _stand_in_attribute
            sys.modules[name] = module
    return importlib.import_module("verl.trainer.ppo.core_algos")


def policy_config(**values):
    from omegaconf import OmegaConf

    return OmegaConf.create({"clip_ratio": 0.2, "clip_ratio_low": None, "clip_ratio_high": None,
                             "global_batch_info": {"dp_size": 1}, **values})


def capture(core) -> list[dict]:
    data = inputs()
    mask, records = data["mask"], []

    def loss_record(name, fn, mode, config, advantages):
        logps = data["logps"].clone().requires_grad_()
        loss, _ = fn(data["old_logps"], logps, advantages, mask, mode, config)
        loss.backward()
        records.append({"name": name, "loss": float(loss.detach()), "grad": (logps.grad * mask).tolist()})

    adv = data["token_advantages"]
    loss_record("dppo_tv", core.compute_policy_loss_dppo_tv, "token-mean", policy_config(), adv)
    loss_record("dppo_tv-radii", core.compute_policy_loss_dppo_tv, "token-mean",
                policy_config(clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=2.0), adv)
    loss_record("dppo_kl", core.compute_policy_loss_dppo_kl, "token-mean", policy_config(), adv)
    loss_record("dppo_kl-radii", core.compute_policy_loss_dppo_kl, "token-mean",
                policy_config(clip_ratio_low=0.05, clip_ratio_high=0.1), adv)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "token-sum"):
        loss_record(f"ppo-dual-clip/{mode}", core.compute_policy_loss_vanilla, mode, policy_config(clip_ratio_c=3.0),
                    adv)

    token_rewards = -0.1 * data["kl"]
    last = mask.sum(-1).long() - 1
    token_rewards[torch.arange(4), last] += data["rewards"]
    from omegaconf import OmegaConf

    advantages, returns = core.compute_reinforce_plus_plus_outcome_advantage(
        token_rewards, mask, config=OmegaConf.create({"gamma": 0.9}))
    records.append({"name": "reinforce_pp", "advantages": advantages.tolist(), "returns": returns.tolist()})
    outcome = torch.zeros_like(mask)
    outcome[torch.arange(4), last] = data["rewards"]
    advantages, _ = core.compute_reinforce_plus_plus_baseline_outcome_advantage(
        outcome, mask, np.array(data["group_ids"]), config=OmegaConf.create({}))
    records.append({"name": "reinforce_pp_baseline", "advantages": advantages.tolist()})

    holes = holed_mask(mask)
    values = torch.linspace(-0.5, 0.7, 24, dtype=mask.dtype).reshape(4, 6)
    advantages, returns = core.compute_gae_advantage_return(token_rewards * holes, values, holes, gamma=0.95,
                                                            lam=0.9)
    records.append({"name": "gae-holes", "advantages": advantages.tolist(), "returns": returns.tolist()})
    advantages, returns = core.compute_reinforce_plus_plus_outcome_advantage(
        token_rewards * holes, holes, config=OmegaConf.create({"gamma": 0.9}))
    records.append({"name": "reinforce_pp-holes", "advantages": advantages.tolist(), "returns": returns.tolist()})

    for name in ("k1", "k2", "k3", "abs", "k1+", "k3+"):
        logps = data["logps"].clone().requires_grad_()
        estimate = core.kl_penalty(logps, data["ref_logps"], name)
        (estimate * mask).sum().backward()
        records.append({"name": f"kl/{name}", "value": (estimate * mask).tolist(), "grad": (logps.grad * mask).tolist()})
    return records


def main() -> None:
    source, deps = sys.argv[1], sys.argv[2]
    core = load_core_algos(source, deps)
    version = importlib.import_module("verl").__version__
    REFERENCE.write_text(json.dumps({"verl_version": version, "records": capture(core)}))
    print(f"wrote {REFERENCE} (verl {version})")


if __name__ == "__main__":
    main()
