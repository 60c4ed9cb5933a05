"""``divalign rl``: online RL (GRPO family, RLOO, PPO, DaGRPO, f-GRPO, f-HAL) on a model folder with a built-in
task or a prompt file."""

from __future__ import annotations

import torch

from divalign import objectives, rewards
from divalign.commands.common import check_output_dir, configure_cpu, non_negative, positive, run_training
from divalign.data.prompts import DatasetPrompts, read_prompt_file
from divalign.errors import UserError
from divalign.models import frozen_copy, load_causal_lm
from divalign.tasks.arithmetic import ArithmeticTask, TaskPrompts
from divalign.trainers.loop import FINAL_MODEL, resume_point
from divalign.trainers.online import ESTIMATORS, OnlineTrainer, RLConfig

TASKS = ("arithmetic",)


def prompt_source(config: RLConfig):
    """(prompt source, reward) from --task or --prompts."""
    if config.task and config.prompts:
        raise UserError("give either --task or --prompts, not both")
    if config.task:
        if config.task not in TASKS:
            raise UserError(f"unknown task '{config.task}' (expected one of: {', '.join(TASKS)})")
        task = ArithmeticTask(config.arithmetic)
        reward = rewards.get(config.reward, config.reward_timeout) if config.reward else task.reward
        return TaskPrompts(task, config.seed), reward
    if not config.prompts:
        raise UserError("no prompts: give --task arithmetic or --prompts FILE")
    examples = read_prompt_file(config.prompts, config.prompt_field, config.answer_field)
    return DatasetPrompts(examples, config.seed), rewards.get(config.reward or "numeric", config.reward_timeout)


def validate(config: RLConfig) -> None:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    positive(config, "steps", "prompts_per_step", "num_generations", "max_new_tokens", "ppo_epochs", "minibatches")
    non_negative(config, "micro_batch_prompts")
    if config.temperature <= 0:
        raise UserError("temperature must be > 0")
    objective = objectives.get(config.objective)
    if objective.family not in ("online", "hybrid"):
        names = objectives.names("online") + objectives.names("hybrid")
        raise UserError(f"objective '{config.objective}' is not an online objective (expected one of: "
                        f"{', '.join(sorted(names))})")
    if config.advantage not in ESTIMATORS:
        raise UserError(f"unknown advantage estimator '{config.advantage}' (expected one of: {', '.join(ESTIMATORS)})")
    estimator = config.objective_options.advantage if config.advantage == "auto" else config.advantage
    if estimator == "rloo" and config.num_generations < 2:
        raise UserError("rloo needs num-generations >= 2")
    if config.minibatches > config.prompts_per_step:
        raise UserError("minibatches must not exceed prompts-per-step (each minibatch holds whole groups)")
    if objective.family == "hybrid" and not config.preference_data:
        raise UserError(f"objective {config.objective} needs --preference-data (pairs for its off-policy part)")


def preference_items(config: RLConfig):
    """f-HAL's preference pairs as unpaired desirable (chosen) and undesirable (rejected) responses."""
    from divalign.commands.preference import BUILTIN, builtin_data
    from divalign.data.preferences import as_unpaired, read_pairs

    if config.preference_data in BUILTIN:
        pairs, unpaired = builtin_data(config.preference_data)
        return unpaired or as_unpaired(pairs)
    return as_unpaired(read_pairs(config.preference_data))


def run(config: RLConfig) -> list[dict]:
    validate(config)
    source, reward_fn = prompt_source(config)
    preference = preference_items(config) if objectives.get(config.objective).family == "hybrid" else None
    run_dir = check_output_dir(config.output_dir, config.resume)
    checkpoint, state = resume_point(run_dir) if config.resume else (None, None)
    configure_cpu(config.threads)
    torch.manual_seed(config.seed)
    policy_path = checkpoint / FINAL_MODEL if checkpoint is not None else config.model
    policy, tokenizer = load_causal_lm(policy_path, trust_remote_code=config.trust_remote_code)
    reference = None
    if config.objective_options.needs_reference or config.log_reference_kl:
        reference = frozen_copy(policy) if checkpoint is None else \
            load_causal_lm(config.model, trust_remote_code=config.trust_remote_code)[0].requires_grad_(False).eval()
    trainer = OnlineTrainer(config, policy, tokenizer, source, reward_fn, reference, preference)
    return run_training(trainer, run_dir, config, state, config.steps)
