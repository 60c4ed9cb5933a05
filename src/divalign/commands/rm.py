"""``divalign rm``: train a Bradley–Terry reward model on preference pairs."""

from __future__ import annotations

import torch

from divalign.commands.common import check_output_dir, configure_cpu, non_negative, positive, run_training
from divalign.commands.preference import BUILTIN, builtin_data, train_and_held_out
from divalign.data.preferences import read_pairs
from divalign.errors import UserError
from divalign.trainers.loop import FINAL_MODEL, resume_point
from divalign.trainers.reward_model import RewardModelTrainer, RMConfig, load_reward_model


def load_pairs(spec: str, config: RMConfig):
    if spec in BUILTIN:
        return builtin_data(spec)[0]
    return read_pairs(
        spec, config.prompt_field, config.chosen_field, config.rejected_field, config.drop_identical_pairs
    )


def run(config: RMConfig) -> list[dict]:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a causal-LM folder to start the reward model from)")
    if not config.data:
        raise UserError(f"no data: give --data FILE or one of {', '.join(BUILTIN)}")
    positive(config, "max_length", "batch_size")
    non_negative(config, "micro_batch_size", "steps")
    train, held = train_and_held_out(lambda path: load_pairs(path, config), config, "pairs")
    run_dir = check_output_dir(config.output_dir, config.resume)
    checkpoint, state = resume_point(run_dir) if config.resume else (None, None)
    configure_cpu(config.threads)
    torch.manual_seed(config.seed)
    model, tokenizer = load_reward_model(
        checkpoint / FINAL_MODEL if checkpoint else config.model, config.trust_remote_code, config.seed
    )
    trainer = RewardModelTrainer(model, tokenizer, config, train, held or None)
    return run_training(trainer, run_dir, config, state, trainer.total_steps, ("loss", "accuracy", "eval_accuracy"))
