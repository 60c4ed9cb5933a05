"""A trained reward model as an RL reward: ``rm:FOLDER`` scores prompt + completion at the last token."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from divalign.data.encoding import encode_texts
from divalign.errors import UserError
from divalign.models import check_causal_lm_folder, load_reward_model, sequence_scores
from divalign.parallel import process_device
from divalign.rewards.base import Reward


class RewardModelScorer(Reward):
    """Scores with an ``AutoModelForSequenceClassification`` folder of one label (as ``divalign rm`` saves).

    Inputs are cut to ``max_length`` tokens as in training (256, ``divalign rm``'s default). It reads no gold
    answer. Construction checks the folder; the model loads at the first batch it scores, so a command can check
    every input before any model loads. It runs in fp32 on the command's device (``device``: an option of
    ``--device``; the process's own GPU under torchrun).
    """

    needs_answers = False

    def __init__(self, folder: str, max_length: int = 256, batch_size: int = 64, device: str = "cpu"):
        self.name = f"rm:{folder}"
        config = Path(folder) / "config.json"
        if config.exists():
            try:
                archs = json.loads(config.read_text()).get("architectures") or []
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
                raise UserError(f"{config}: invalid JSON ({exc})") from None
            if not any(a.endswith("ForSequenceClassification") for a in archs):
                raise UserError(
                    f"'{folder}' is not a reward model (config.json architectures {archs}; expected a "
                    "*ForSequenceClassification model, as `divalign rm` saves)"
                )
        check_causal_lm_folder(folder)
        self.folder, self.model, self.tokenizer = folder, None, None
        self.max_length, self.batch_size, self.device = max_length, batch_size, device

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str], answers: list[str] | None = None) -> list[float]:
        if self.model is None:
            self.model, self.tokenizer = load_reward_model(self.folder)
            self.model.requires_grad_(False).eval().to(process_device(self.device))
        out = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = encode_texts(
                self.tokenizer,
                prompts[start : start + self.batch_size],
                completions[start : start + self.batch_size],
                self.max_length,
            )
            device = next(self.model.parameters()).device
            out += sequence_scores(self.model, ids.to(device), mask.to(device)).tolist()
        return out
