"""``divalign rl``: online RL (GRPO, f-GRPO) on a model folder with a built-in task or a prompt file."""

from __future__ import annotations

from pathlib import Path

import torch

from divalign import advantages, rewards
from divalign.commands.common import check_output_dir, create_run_dir, non_negative, positive, set_threads
from divalign.data.prompts import DatasetPrompts, read_prompt_file
from divalign.errors import UserError
from divalign.models import frozen_copy, load_causal_lm
from divalign.tasks.arithmetic import ArithmeticTask, TaskPrompts
from divalign.trainers.loop import FINAL_MODEL, resume_point, run_steps
from divalign.trainers.online import OnlineTrainer, RLConfig

TASKS = ("arithmetic",)


def prompt_source(config: RLConfig):
    """(prompt source, reward function) from --task or --prompts."""
    if config.task and config.prompts:
        raise UserError("give either --task or --prompts, not both")
    if config.task:
        if config.task not in TASKS:
            raise UserError(f"unknown task '{config.task}' (expected one of: {', '.join(TASKS)})")
        task = ArithmeticTask(config.arithmetic)
        return TaskPrompts(task, config.seed), rewards.get(config.reward) if config.reward else task.reward
    if not config.prompts:
        raise UserError("no prompts: give --task arithmetic or --prompts FILE.jsonl")
    examples = read_prompt_file(config.prompts, config.prompt_field, config.answer_field)
    return DatasetPrompts(examples, config.seed), rewards.get(config.reward or "numeric")


def validate(config: RLConfig) -> None:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    positive(config, "steps", "prompts_per_step", "num_generations", "max_new_tokens")
    if config.temperature <= 0:
        raise UserError("temperature must be > 0")
    non_negative(config, "micro_batch_prompts")
    if config.advantage not in advantages.ESTIMATORS:
        raise UserError(
            f"unknown advantage estimator '{config.advantage}' (expected one of: {', '.join(advantages.ESTIMATORS)})"
        )
    if config.advantage == "rloo" and config.num_generations < 2:
        raise UserError("rloo needs num-generations >= 2")


def run(config: RLConfig) -> list[dict]:
    validate(config)
    from divalign import objectives

    objectives.get(config.objective, family="online")
    source, reward_fn = prompt_source(config)
    run_dir = check_output_dir(config.output_dir, config.resume)
    checkpoint, state = resume_point(run_dir) if config.resume else (None, None)
    set_threads(config.threads)
    torch.manual_seed(config.seed)
    policy_path = checkpoint / FINAL_MODEL if checkpoint is not None else config.model
    policy, tokenizer = load_causal_lm(policy_path, trust_remote_code=config.trust_remote_code)
    needs_ref = config.objective_options.needs_reference or config.log_reference_kl
    reference = None
    if needs_ref:
        reference = (
            frozen_copy(policy)
            if checkpoint is None
            else load_causal_lm(config.model, trust_remote_code=config.trust_remote_code)[0]
            .requires_grad_(False)
            .eval()
        )

    trainer = OnlineTrainer(config, policy, tokenizer, source, reward_fn, reference)
    create_run_dir(Path(run_dir), config)
    start = trainer.load_state_dict(state) if state is not None else 0
    return run_steps(
        trainer,
        run_dir,
        config.steps,
        start_step=start,
        save_every=config.save_every,
        keep_checkpoints=config.keep_checkpoints,
        show_progress=config.progress,
        resumed=config.resume,
    )
