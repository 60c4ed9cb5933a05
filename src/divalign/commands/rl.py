"""``divalign rl``: online RL (GRPO family, RLOO, PPO, DaGRPO, f-GRPO, f-HAL, ...) on a model folder with a built-in
task or a prompt file."""

from __future__ import annotations

import functools

from divalign import rewards
from divalign.commands.common import non_negative, positive, prepare_run, run_training, trained_model
from divalign.data.builtin import BUILTIN, builtin_unpaired
from divalign.data.preferences import Unpaired, as_unpaired, read_pairs, render_unpaired
from divalign.data.prompts import DatasetPrompts, read_prompt_file, render_examples
from divalign.errors import UserError
from divalign.models import check_causal_lm_folder, frozen_copy, load_causal_lm, load_tokenizer
from divalign.models.adapters import AdapterOff
from divalign.rewards.spec import check_answers, verifiers_of
from divalign.tasks.arithmetic import ArithmeticTask, TaskPrompts
from divalign.trainers.online import OnlineTrainer, RLConfig

TASKS = ("arithmetic",)


def validate(config: RLConfig) -> None:
    if not config.model:
        raise UserError("no model: give --model FOLDER (a Hugging Face causal-LM folder)")
    positive(config, "steps", "prompts_per_step", "num_generations", "max_new_tokens", "ppo_epochs", "minibatches")
    non_negative(config, "micro_batch_prompts")
    if not config.temperature > 0:
        raise UserError("temperature must be > 0")
    if config.minibatches > config.prompts_per_step:
        raise UserError("minibatches must not exceed prompts-per-step (each minibatch holds whole groups)")
    if config.chosen.preference_loss is not None and not config.preference_data:
        raise UserError(f"objective {config.objective} needs --preference-data (pairs for its off-policy part)")
    if config.task and config.prompts:
        raise UserError("give either --task or --prompts, not both")
    if config.task and config.task not in TASKS:
        raise UserError(f"unknown task '{config.task}' (expected one of: {', '.join(TASKS)})")
    if not config.task and not config.prompts:
        raise UserError("no prompts: give --task arithmetic or --prompts FILE")


def prompt_source(config: RLConfig, tokenizer):
    """The prompt source of --task or --prompts, every prompt and answer checked (and conversations rendered)."""
    if config.task:
        return TaskPrompts(ArithmeticTask(config.arithmetic), config.seed)
    spec = config.reward or "numeric"
    examples = read_prompt_file(config.prompts, config.prompt_field, config.answer_field,
                                answers=bool(verifiers_of(spec)))
    check_answers(spec, examples)
    return DatasetPrompts(render_examples(tokenizer, examples), config.seed)


def preference_items(config: RLConfig, tokenizer) -> list[Unpaired] | None:
    """The preference data of an objective with an off-policy part, as desirable (chosen) and undesirable
    (rejected) responses; None for the others."""
    if config.chosen.preference_loss is None:
        return None
    if config.preference_data in BUILTIN:
        return builtin_unpaired(config.preference_data)
    return render_unpaired(tokenizer, as_unpaired(read_pairs(config.preference_data,
                                                             drop_identical=config.drop_identical_pairs)))


def reward_of(config: RLConfig, source) -> rewards.Reward:
    """The reward of --reward, else the task's own, else numeric."""
    if not config.reward and isinstance(source, TaskPrompts):
        return source.task.reward
    return rewards.get(config.reward or "numeric", config)


def run(config: RLConfig) -> list[dict]:
    validate(config)
    check_causal_lm_folder(config.model, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    source = prompt_source(config, tokenizer)
    preference = preference_items(config, tokenizer)
    run = prepare_run(config)
    reward_fn = reward_of(config, source)
    load = functools.partial(load_causal_lm, trust_remote_code=config.trust_remote_code)
    base, tokenizer = load(run.base_path(config))
    policy = trained_model(base, config, run)
    reference = None
    if config.needs_reference and config.lora.r:
        reference = AdapterOff(policy)
    elif config.needs_reference:  # the starting model; a resumed run's policy has moved away from it
        reference = frozen_copy(policy) if run.checkpoint is None else load(config.model)[0].requires_grad_(False).eval()
    trainer = OnlineTrainer(config, policy, tokenizer, source, reward_fn, reference, preference, run.world)
    return run_training(trainer, run, config, config.steps)
