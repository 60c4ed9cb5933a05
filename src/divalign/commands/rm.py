"""``divalign rm``: train a Bradley–Terry reward model on preference pairs."""

from __future__ import annotations

import functools

from divalign.commands.common import non_negative, positive, prepare_run, run_training, trained_model
from divalign.data.builtin import BUILTIN, builtin_data, train_and_held_out
from divalign.data.preferences import Pair, read_pairs, render_pairs
from divalign.errors import UserError
from divalign.models import check_causal_lm_folder, load_reward_model, load_tokenizer
from divalign.trainers.reward_model import RewardModelTrainer, RMConfig


def load_pairs(spec: str, config: RMConfig) -> list[Pair]:
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
    if not 0 <= config.eval_fraction < 1:
        raise UserError("eval-fraction must be in [0, 1)")
    train, held = train_and_held_out(functools.partial(load_pairs, config=config), config.data, config.eval_data,
                                     config.eval_fraction, config.seed, "pairs")
    check_causal_lm_folder(config.model, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    train, held = render_pairs(tokenizer, train), render_pairs(tokenizer, held)
    run = prepare_run(config)
    base, tokenizer = load_reward_model(run.base_path(config), config.trust_remote_code, config.seed)
    model = trained_model(base, config, run, classifier=True)
    trainer = RewardModelTrainer(model, tokenizer, config, train, held or None, run.world)
    return run_training(trainer, run, config, trainer.total_steps, ("loss", "accuracy", "eval_accuracy"))
