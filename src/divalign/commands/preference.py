"""``divalign preference``: offline alignment on preference pairs or desirable/undesirable data."""

from __future__ import annotations

import random

import torch

from divalign import objectives
from divalign.commands.common import check_output_dir, configure_cpu, non_negative, positive, run_training
from divalign.data.preferences import (
    Pair,
    Unpaired,
    advbench_compliance_refusal,
    as_unpaired,
    read_hh_rlhf,
    read_pairs,
    read_unpaired,
)
from divalign.data.records import read_records
from divalign.errors import UserError
from divalign.models import frozen_copy, load_causal_lm
from divalign.paths import data_dir
from divalign.trainers.loop import FINAL_MODEL, resume_point
from divalign.trainers.preference import PreferenceConfig, PreferenceTrainer

BUILTIN = ("hh-rlhf:harmless-base", "hh-rlhf:helpful-base", "advbench")


def builtin_data(name: str) -> tuple[list[Pair], list[Unpaired] | None]:
    root = data_dir()
    if root is None:
        raise UserError(f"'{name}' needs the shared data folder: set DIVALIGN_DATA")
    if name == "advbench":
        unpaired, pairs = advbench_compliance_refusal(root / "advbench" / "harmful_behaviors.csv")
        return pairs, unpaired
    return read_hh_rlhf(root / "hh_rlhf" / name.split(":", 1)[1] / "test.jsonl.gz"), None


def load(spec: str, config: PreferenceConfig, paired: bool) -> list[Pair] | list[Unpaired]:
    """Pairs for the pair objectives; desirable/undesirable examples for the unpaired ones."""
    if spec in BUILTIN:
        pairs, unpaired = builtin_data(spec)
        return pairs if paired else (unpaired or as_unpaired(pairs))
    first = read_records(spec)[0].data
    if config.chosen_field in first:
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


def split_by_prompt(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the distinct prompts (all their items go to the same side)."""
    prompts = sorted({item.prompt for item in items})
    random.Random(f"eval-split-{seed}").shuffle(prompts)
    held = set(prompts[: int(round(fraction * len(prompts)))])
    return [i for i in items if i.prompt not in held], [i for i in items if i.prompt in held]


def train_and_held_out(read, config, what: str = "items") -> tuple[list, list]:
    """The training items and the held-out ones: ``read(config.eval_data)`` when given, else a split of
    ``read(config.data)`` by prompt; an empty training side is the user's error."""
    items = read(config.data)
    if config.eval_data:
        train, held = items, read(config.eval_data)
    else:
        train, held = split_by_prompt(items, config.eval_fraction, config.seed)
    if not train:
        raise UserError(f"{config.data}: no training {what} left after holding out the evaluation split")
    return train, held


def run(config: PreferenceConfig) -> list[dict]:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    if not config.data:
        raise UserError(f"no data: give --data FILE or one of {', '.join(BUILTIN)}")
    positive(config, "max_length", "batch_size")
    non_negative(config, "micro_batch_size", "steps")
    if not 0 <= config.eval_fraction < 1:
        raise UserError("eval-fraction must be in [0, 1)")
    objective = objectives.get(config.objective)
    if objective.family not in ("pairs", "unpaired"):
        raise UserError(
            f"objective '{config.objective}' is not an offline objective "
            f"(expected one of: {', '.join(objectives.names('pairs') + objectives.names('unpaired'))})"
        )
    paired = objective.family == "pairs"
    if getattr(config.objective_options, "whole_batch_only", False) and config.micro_batch_size not in (
        0,
        config.batch_size,
    ):
        raise UserError(
            f"objective '{config.objective}' with preset '{config.fdo.preset}' needs the whole batch in "
            "one forward pass: set micro-batch-size to 0"
        )
    train, held = train_and_held_out(lambda path: load(path, config, paired), config)
    run_dir = check_output_dir(config.output_dir, config.resume)
    checkpoint, state = resume_point(run_dir) if config.resume else (None, None)
    configure_cpu(config.threads)
    torch.manual_seed(config.seed)
    reference, tokenizer = load_causal_lm(config.model, trust_remote_code=config.trust_remote_code)
    policy = (
        load_causal_lm(checkpoint / FINAL_MODEL, trust_remote_code=config.trust_remote_code)[0]
        if checkpoint
        else frozen_copy(reference).requires_grad_(True)
    )
    reference.requires_grad_(False).eval()
    trainer = PreferenceTrainer(policy, tokenizer, config, train, reference, held or None)
    keys = ("loss", "reward_accuracy", "eval_accuracy")
    return run_training(trainer, run_dir, config, state, trainer.total_steps, keys)
