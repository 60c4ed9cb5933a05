"""Run TRL's DPOTrainer loss on a real tiny model and record exactly what it computed.

For each configuration (loss type, f-divergence, α), TRL's ``_compute_loss`` runs on one batch of 8 pairs. Forward
hooks read the per-token log-probabilities the policy and the reference returned, and the gradient of TRL's loss
with respect to the policy's per-token log-probabilities. divalign's objectives are then checked against these
numbers, live when TRL is installed and from ``data/trl_dpo_reference.json`` always.

Regenerate the stored file (TRL installed): ``python tests/trl_dpo_capture.py``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

CONFIGS = [
    {"loss_type": "sigmoid", "f_divergence_type": "reverse_kl", "beta": 0.1},
    {"loss_type": "sigmoid", "f_divergence_type": "forward_kl", "beta": 0.1},
    {"loss_type": "sigmoid", "f_divergence_type": "js_divergence", "beta": 0.1},
    {"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.5, "beta": 0.1},
    {"loss_type": "sigmoid", "f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3, "beta": 0.2},
    {"loss_type": "ipo", "f_divergence_type": "reverse_kl", "beta": 0.1},
]
PAIRS = [
    (f"{a}+{b}=", str(a + b), str(a + b + d))
    for a, b, d in [(1, 2, 1), (13, 4, 20), (5, 60, 3), (7, 8, 11), (9, 11, 2), (22, 2, 5), (4, 41, 30), (6, 1, 9)]
]
REFERENCE = Path(__file__).parent / "data" / "trl_dpo_reference.json"


def capture(config: dict, workdir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from divalign.charlm import write_tiny_model

    folder = write_tiny_model(
        Path(workdir) / "model",
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        max_positions=64,
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ref = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():  # make policy and reference differ, so log-ratios are not all zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    args = DPOConfig(
        output_dir=str(Path(workdir) / "out"),
        per_device_train_batch_size=len(PAIRS),
        use_cpu=True,
        report_to="none",
        max_length=32,
        **config,
    )
    data = Dataset.from_dict(
        {"prompt": [p for p, _, _ in PAIRS], "chosen": [c for _, c, _ in PAIRS], "rejected": [r for _, _, r in PAIRS]}
    )
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    seen = {}

    def hook(name):
        def record(module, args, kwargs, output):
            if name == "policy":
                output.log_probs.retain_grad()
            seen[name] = output.log_probs

        return record

    handles = [
        trainer.model.register_forward_hook(hook("policy"), with_kwargs=True),
        trainer.ref_model.register_forward_hook(hook("reference"), with_kwargs=True),
    ]
    loss = trainer._compute_loss(trainer.model, batch, False)
    loss.backward()
    for h in handles:
        h.remove()
    mask = batch["completion_mask"][:, 1:]
    width = mask.shape[1]
    return {
        "config": config,
        "policy_token_logps": seen["policy"][:, -width:].detach().tolist(),
        "reference_token_logps": seen["reference"][:, -width:].detach().tolist(),
        "completion_mask": mask.tolist(),
        "loss": float(loss.detach()),
        "grad_policy_token_logps": seen["policy"].grad[:, -width:].tolist(),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        records = [capture(config, workdir) for config in CONFIGS]
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"trl_version": __import__("trl").__version__, "records": records}))
    print(f"wrote {REFERENCE}")


if __name__ == "__main__":
    main()
