"""Run TRL's own GRPO-family loss code (``GRPOTrainer._compute_loss``, and the experimental ``GMPOTrainer``'s) on
fixed per-token log-probabilities and record what it computed: the loss and its gradient with respect to the
policy's per-token log-probabilities.

A real trainer is built on a tiny model; only its forward is replaced, by a function that returns the given
log-probabilities, so every line of TRL's loss (ratios, sequence-level weights, clipping, gates, KL, bias
correction, aggregation) runs as in training. The inputs have ratios inside and outside every clip range, responses
of different lengths, positive and negative advantages. divalign's objectives are checked against these numbers,
live when TRL is installed and from ``data/trl_grpo_reference.json`` always.

Regenerate the stored file (TRL installed): ``python tests/trl_grpo_capture.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

REFERENCE = Path(__file__).parent / "data" / "trl_grpo_reference.json"

#: (name, TRL's config, the divalign objective and options that compute the same loss)
CONFIGS = [
    ("gspo", {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4,
              "beta": 0.0}, "gspo", {}),
    ("gspo-kl", {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 0.05, "epsilon_high": 0.1,
                 "beta": 0.04, "use_bias_correction_kl": False}, "gspo", {"epsilon_low": 0.05, "epsilon_high": 0.1, "beta": 0.04}),
    ("gspo-kl-bias-corrected", {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 0.05,
                                "epsilon_high": 0.1, "beta": 0.04, "use_bias_correction_kl": True},
     "gspo", {"epsilon_low": 0.05, "epsilon_high": 0.1, "beta": 0.04, "kl_bias_correction": True}),
    ("cispo", {"loss_type": "cispo", "epsilon_high": 5.0, "beta": 0.0}, "cispo", {"max_weight": 5.0}),
    ("cispo-cap-1.2", {"loss_type": "cispo", "epsilon_high": 1.2, "beta": 0.0}, "cispo", {"max_weight": 1.2}),
    ("sapo", {"loss_type": "sapo", "beta": 0.0}, "sapo", {}),
    ("sapo-kl", {"loss_type": "sapo", "beta": 0.04, "use_bias_correction_kl": False, "sapo_temperature_pos": 2.0, "sapo_temperature_neg": 3.0},
     "sapo", {"beta": 0.04, "temperature_pos": 2.0, "temperature_neg": 3.0}),
    ("grpo-kl-bias-corrected", {"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": True},
     "grpo", {"beta": 0.04, "kl_bias_correction": True}),
    ("grpo-kl", {"loss_type": "grpo", "beta": 0.04, "use_bias_correction_kl": False}, "grpo", {"beta": 0.04}),
    ("gmpo", {"gmpo": True, "epsilon": 0.4, "beta": 0.0}, "gmpo", {}),
    ("gmpo-kl", {"gmpo": True, "epsilon": 0.3, "epsilon_high": 0.2, "beta": 0.04},
     "gmpo", {"epsilon_low": 0.3, "epsilon_high": 0.2, "beta": 0.04}),
]


def inputs(dtype=torch.float64) -> dict:
    """Four responses of up to 6 tokens (lengths 6, 4, 5, 2), two per prompt, with log-ratios to the old policy
    within ±3e-4 (rows 0 and 2: inside GSPO's narrow clip range) or ±0.6 (rows 1 and 3: inside and outside every
    other clip range), and a reference that differs from both."""
    generator = torch.Generator().manual_seed(0)
    shape = (4, 6)
    logps = -torch.rand(shape, generator=generator, dtype=dtype) * 3 - 0.05
    spread = torch.tensor([[6e-4], [1.2], [6e-4], [1.2]], dtype=dtype)
    old = logps - (torch.rand(shape, generator=generator, dtype=dtype) - 0.5) * spread
    ref = logps - (torch.rand(shape, generator=generator, dtype=dtype) - 0.5) * 0.8
    mask = torch.zeros(shape, dtype=dtype)
    for row, length in enumerate((6, 4, 5, 2)):
        mask[row, :length] = 1
    advantages = torch.tensor([0.9, -0.9, -1.3, 1.3], dtype=dtype)
    return {"logps": logps, "old_logps": old, "ref_logps": ref, "mask": mask, "advantages": advantages}


def trl_trainer(config: dict, workdir: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from divalign.charlm import write_tiny_model

    folder = write_tiny_model(f"{workdir}/model", hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                              num_kv_heads=1, max_positions=32)
    settings = {k: v for k, v in config.items() if k != "gmpo"}
    common = dict(output_dir=f"{workdir}/trl", per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=6, use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True)
    if config.get("gmpo"):
        from trl.experimental.gmpo import GMPOConfig as Config
        from trl.experimental.gmpo import GMPOTrainer as Trainer
    else:
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as Trainer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return Trainer(model=AutoModelForCausalLM.from_pretrained(folder), reward_funcs=lambda completions, **kw: [0.0]
                   * len(completions), args=Config(**common, **settings),
                   train_dataset=Dataset.from_dict({"prompt": ["1+1="] * 4}), processing_class=tokenizer)


def capture(config: dict, workdir: str) -> dict:
    """TRL's loss and its gradient with respect to the per-token log-probabilities of :func:`inputs`."""
    trainer = trl_trainer(config, workdir)
    data = inputs()
    logps = data["logps"].clone().requires_grad_()
    # the one replaced piece: the model's forward, so that TRL's loss reads these log-probabilities
    trainer._get_per_token_logps_and_entropies = lambda *args, **kwargs: (logps, torch.zeros_like(logps), None)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    batch = {"prompt_ids": torch.zeros(4, 1, dtype=torch.long), "prompt_mask": torch.ones(4, 1, dtype=torch.long),
             "completion_ids": torch.zeros(4, 6, dtype=torch.long), "completion_mask": data["mask"].long(),
             "advantages": data["advantages"], "old_per_token_logps": data["old_logps"],
             "ref_per_token_logps": data["ref_logps"], "num_items_in_batch": data["mask"].sum()}
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    return {"loss": float(loss.detach()), "grad": (logps.grad * data["mask"]).tolist()}


def main() -> None:
    records = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, config, _, _ in CONFIGS:
            records.append({"name": name, **capture(config, workdir)})
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"trl_version": __import__("trl").__version__, "records": records}))
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
