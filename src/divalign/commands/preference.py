"""``divalign preference``: offline alignment on preference pairs or desirable/undesirable data."""

from __future__ import annotations

import functools

from divalign import parallel
from divalign.commands.common import non_negative, positive, prepare_run, run_training, trained_model
from divalign.data.builtin import BUILTIN, builtin_data, train_and_held_out
from divalign.data.preferences import (
    Pair,
    Unpaired,
    as_unpaired,
    read_pairs,
    read_unpaired,
    render_pairs,
    render_unpaired,
)
from divalign.data.records import read_records
from divalign.errors import UserError
from divalign.models import check_causal_lm_folder, frozen_copy, load_causal_lm, load_tokenizer
from divalign.models.adapters import AdapterOff
from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer


def load(spec: str, config: PreferenceConfig, paired: bool) -> list[Pair] | list[Unpaired]:
    """Pairs for the pair objectives; desirable/undesirable examples for the unpaired ones."""
    if spec in BUILTIN:
        pairs, unpaired = builtin_data(spec)
        return pairs if paired else (unpaired or as_unpaired(pairs))
    first = read_records(spec)[0].data
    if config.chosen_field in first and config.rejected_field in first:
        pairs = read_pairs(
            spec, config.prompt_field, config.chosen_field, config.rejected_field, config.drop_identical_pairs
        )
        return pairs if paired else as_unpaired(pairs)
    if paired:
        raise UserError(
            f"{spec}: objective '{config.objective}' needs pairs (fields '{config.prompt_field}', "
            f"'{config.chosen_field}', '{config.rejected_field}')"
        )
    return read_unpaired(spec, config.prompt_field, config.completion_field, config.label_field)


def validate(config: PreferenceConfig) -> None:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    if not config.data:
        raise UserError(f"no data: give --data FILE or one of {', '.join(BUILTIN)}")
    positive(config, "max_length", "batch_size")
    non_negative(config, "micro_batch_size", "steps")
    if not 0 <= config.eval_fraction < 1:
        raise UserError("eval-fraction must be in [0, 1)")
    options = config.objective_options
    if config.chosen.family == "unpaired" and options.whole_batch_only and config.micro_batch_size not in (
            0, config.batch_size):
        raise UserError(f"objective '{config.objective}' with these options needs the whole batch in one forward "
                        "pass: set micro-batch-size to 0")
    processes = parallel.launched_size()
    if config.chosen.family == "unpaired" and options.whole_batch_only and config.batch_size % processes:
        raise UserError(f"objective '{config.objective}' with these options gathers the whole batch from every "
                        f"process: batch-size ({config.batch_size}) must be a multiple of the {processes} processes")


def run(config: PreferenceConfig) -> list[dict]:
    validate(config)
    paired = config.chosen.family == "pairs"
    train, held = train_and_held_out(functools.partial(load, config=config, paired=paired), config.data,
                                     config.eval_data, config.eval_fraction, config.seed)
    check_causal_lm_folder(config.model, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    render = render_pairs if paired else render_unpaired
    train, held = render(tokenizer, train), render(tokenizer, held)
    run = prepare_run(config)
    load_model = functools.partial(load_causal_lm, trust_remote_code=config.trust_remote_code)
    reference, tokenizer = load_model(config.model)
    if config.lora.r:  # the reference is the base with the adapter off: one copy of the model
        policy = trained_model(reference, config, run)
        reference = AdapterOff(policy)
    elif run.checkpoint is not None:
        policy = load_model(run.model_path(config.model))[0]
    else:
        policy = frozen_copy(reference).requires_grad_(True)
    reference.requires_grad_(False).eval()
    trainer = PreferenceTrainer(policy, tokenizer, config, train, reference, held or None, run.world)
    return run_training(trainer, run, config, trainer.total_steps, ("loss", "reward_accuracy", "eval_accuracy"))
