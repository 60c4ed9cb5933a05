"""``divalign eval``: evaluate a model folder and write ``results.json`` (plus a reliability diagram) to a folder.

Every section is optional and independent: task accuracy, reward, KL to a reference, perplexity, response lengths,
win rate against another model, safety (refusal, jailbreak attack success, over-refusal, GCG), calibration and
representation separation. Generations are cached in ``generations.jsonl``; ``--resume`` reuses the cache, so an
interrupted evaluation only generates what is missing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from divalign import rewards
from divalign.commands.common import (
    check_output_dir,
    check_prompt_format,
    configure_process,
    create_run_dir,
    load_frozen,
    non_negative,
    positive,
    precision,
)
from divalign.data.prompts import Example, read_prompt_file
from divalign.data.records import read_records, require_fields
from divalign.errors import UserError
from divalign.eval.calibration import answer_confidence, expected_calibration_error, reliability_diagram
from divalign.eval.generations import Decoding, GenerationCache, generate, render_prompt
from divalign.eval.metrics import kl_to_reference, length_stats, perplexity, win_rate
from divalign.eval.passk import evaluate
from divalign.eval.safety.data import benign_prompts, harmful_requests, jailbreak_templates, labelled_responses
from divalign.eval.safety.gcg import gcg_attack
from divalign.eval.safety.judge import train_and_score
from divalign.eval.safety.suite import run_safety
from divalign.eval.separation import last_token_states, separation
from divalign.models import check_causal_lm_folder, load_tokenizer
from divalign.rewards import RewardOptions
from divalign.rewards.spec import check_answers, verifiers_of
from divalign.tasks.arithmetic import ArithmeticTask
from divalign.trainers.options import DeviceOptions

RESULTS = "results.json"
CACHE = "generations.jsonl"
FAMILIES = ("gptfuzzer", "gptfuzzer-short", "autodan", "autodan-population")


@dataclass
class EvalConfig(RewardOptions, DeviceOptions):
    """Evaluate a model folder: task accuracy, reward, KL, perplexity, lengths, win rate, safety, calibration,
    separation. Each section runs when its options are given."""

    model: str = ""
    """Folder of the model to evaluate (a Hugging Face causal LM)."""
    output_dir: str = "runs/eval"
    """Folder for results.json, generations.jsonl and plots."""
    resume: bool = False
    """Reuse the generations already cached in output_dir."""
    task: str = ""
    """Task accuracy: arithmetic, or a prompt file with gold answers (GSM8K: data:gsm8k/test.jsonl)."""
    prompt_field: str = "prompt"
    """Prompt field of the task or prompts file (GSM8K: question)."""
    answer_field: str = "answer"
    """Answer field of the task file."""
    task_reward: str = "numeric"
    """Reward that decides correctness for a task file: numeric, exact, math or module:function."""
    task_limit: int = 200
    """How many task problems to evaluate."""
    pass_k: int = 8
    """k of pass@k (that many samples per problem)."""
    calibration: bool = False
    """Calibration of the greedy answer's probability against correctness on the task (ECE, diagram)."""
    prompts: str = ""
    """Prompt file (JSONL/CSV/..., field prompt_field) for reward, KL, lengths and win rate; or hh-rlhf:helpful."""
    prompts_limit: int = 100
    """How many prompts to use from --prompts."""
    reward: str = ""
    """Mean reward of the responses to --prompts (scored against answer_field when the file has it): rm:FOLDER,
    numeric, exact, math or module:function."""
    reference: str = ""
    """Reference model folder: KL(model || reference) on sampled responses to --prompts."""
    kl_samples: int = 4
    """Sampled responses per prompt for the KL estimate."""
    model_b: str = ""
    """Second model folder: win rate of model over model_b on --prompts, judged by --judge-rm."""
    judge_rm: str = ""
    """Reward-model folder that judges the win rate."""
    perplexity_data: str = ""
    """Text file (JSONL/CSV/...) whose text_field is scored for perplexity."""
    text_field: str = "text"
    """Field of perplexity_data holding the text."""
    safety: bool = False
    """Safety suite: refusal and attack success on AdvBench, jailbreak templates, over-refusal on benign prompts."""
    harmful_requests: int = 100
    """AdvBench requests asked plainly (the first N)."""
    requests_per_template: int = 2
    """Requests wrapped in each jailbreak template."""
    template_families: str = "gptfuzzer,gptfuzzer-short,autodan"
    """Comma-separated template families: gptfuzzer, gptfuzzer-short, autodan, autodan-population."""
    benign_requests: int = 100
    """Benign HH-RLHF helpful requests for over-refusal."""
    gcg: int = 0
    """Run the GCG suffix attack on this many AdvBench requests."""
    gcg_steps: int = 30
    """GCG optimisation steps per request."""
    separation: bool = False
    """Bhattacharyya distance and silhouette between harmful and benign prompt representations."""
    separation_prompts: int = 100
    """Prompts per side for the separation metrics."""
    max_new_tokens: int = 64
    """Response budget for generated answers."""
    prompt_format: str = "{prompt}"
    """How a request is shown to a model without a chat template, e.g. 'User: {prompt}\\nAssistant:'."""
    batch_size: int = 32
    """Prompts per generation batch."""
    seed: int = 0
    """Seed of sampling and of the request selection."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show progress bars."""


def _prompts(config: EvalConfig) -> list[Example]:
    """The requests of --prompts (each a string or a conversation) with their gold answers when the file has
    them."""
    if config.prompts == "hh-rlhf:helpful":
        return [Example(p, "") for p in benign_prompts("helpful-base", config.prompts_limit)]
    examples = read_prompt_file(config.prompts, config.prompt_field, config.answer_field,
                                answers=bool(config.reward and verifiers_of(config.reward)))
    return examples[: config.prompts_limit]


def _texts(path: str, field: str) -> list[str]:
    records = read_records(path)
    require_fields(records, {field: str})
    return [r.data[field] for r in records]


def validate(config: EvalConfig) -> None:
    if not config.model:
        raise UserError("no model: give --model FOLDER")
    positive(config, "task_limit", "pass_k", "prompts_limit", "kl_samples", "max_new_tokens", "batch_size")
    non_negative(config, "harmful_requests", "requests_per_template", "benign_requests", "gcg", "gcg_steps")
    unknown = set(filter(None, config.template_families.split(","))) - set(FAMILIES)
    if unknown:
        raise UserError(f"template-families: unknown {', '.join(sorted(unknown))} (expected: {', '.join(FAMILIES)})")
    needs_prompts = [name for name in ("reward", "reference", "model_b") if getattr(config, name)]
    if needs_prompts and not config.prompts:
        raise UserError(f"--{needs_prompts[0].replace('_', '-')} needs --prompts (the requests to answer)")
    if config.model_b and not config.judge_rm:
        raise UserError("--model-b needs --judge-rm (a reward model that judges the win rate)")
    if config.calibration and not config.task:
        raise UserError("--calibration needs --task (answers that can be checked)")
    check_prompt_format(config.prompt_format)


def run(config: EvalConfig) -> dict:
    validate(config)
    task_examples, task_reward = _task(config)
    requests = _prompts(config) if config.prompts else []
    if config.reward:
        check_answers(config.reward, requests)
    prompts = [ex.prompt for ex in requests]
    perplexity_texts = _texts(config.perplexity_data, config.text_field) if config.perplexity_data else []
    for folder in (config.model, config.reference, config.model_b):
        if folder:
            check_causal_lm_folder(folder, config.trust_remote_code)
    # every request through the template now, so a conversation the template cannot render fails before loading
    tokenizer = load_tokenizer(config.model, config.trust_remote_code) if prompts else None
    texts = [render_prompt(tokenizer, ex.prompt, config.prompt_format, ex.where or "prompt")[0] for ex in requests]
    scorer = rewards.get(config.reward, config) if config.reward else None
    judge = rewards.get(f"rm:{config.judge_rm}", config) if config.model_b else None
    out = check_output_dir(config.output_dir, config.resume)
    configure_process(config.threads, config.progress)
    torch.manual_seed(config.seed)
    model, tokenizer = load_frozen(config.model, config)
    create_run_dir(out, config)
    cache = GenerationCache(out / CACHE)
    results: dict = {"model": config.model}
    common = {"cache": cache, "model_id": config.model, "prompt_format": config.prompt_format,
              "batch_size": config.batch_size, "show_progress": config.progress}
    timings = {}

    def section(name, fn):
        t = time.perf_counter()
        with precision(config):
            results[name] = fn()
        timings[name] = time.perf_counter() - t
        (out / RESULTS).write_text(json.dumps({**results, "seconds": timings}, indent=2))  # partial results survive

    if task_examples:
        section("task", lambda: evaluate(model, tokenizer, task_examples, task_reward,
                                         max_new_tokens=config.max_new_tokens, k=config.pass_k, seed=config.seed,
                                         cache=cache, model_id=config.model, batch_size=config.batch_size * 8,
                                         show_progress=config.progress))
    if config.calibration:
        section("calibration", lambda: _calibration(model, tokenizer, task_examples, task_reward, config, out))
    if prompts:
        greedy = Decoding(config.max_new_tokens, greedy=True)
        answers = generate(model, tokenizer, prompts, greedy, desc="responses", **common)
        section("lengths", lambda: length_stats([a["tokens"] for a in answers], [a["truncated"] for a in answers]))
        # the request itself for a string (as a reward model reads it), the chat template's text for a conversation
        texts = [p if isinstance(p, str) else text for p, text in zip(prompts, texts)]
        if scorer is not None:
            section("reward", lambda: {"reward_mean": sum(scorer(texts, [a["response"] for a in answers],
                                                                 [ex.answer for ex in requests])) / len(prompts)})
        if config.reference:
            section("kl", lambda: _kl(model, tokenizer, [(t, not isinstance(p, str)) for t, p in zip(texts, prompts)],
                                      config))
        if judge is not None:
            section("win_rate", lambda: _win_rate(model, tokenizer, prompts, texts, answers, judge, config, common))
    if perplexity_texts:
        section("perplexity", lambda: perplexity(model, tokenizer, perplexity_texts))
    if config.safety:
        section("safety", lambda: _safety(model, tokenizer, config, common))
    if config.gcg:
        section("gcg", lambda: _gcg(model, tokenizer, config))
    if config.separation:
        section("separation", lambda: _separation(model, tokenizer, config))
    return results


def _task(config: EvalConfig):
    if not config.task:
        return [], None
    if config.task == "arithmetic":
        task = ArithmeticTask()
        return task.eval_set(config.task_limit), task.reward
    examples = read_prompt_file(config.task, config.prompt_field, config.answer_field)[: config.task_limit]
    check_answers(config.task_reward, examples)
    return examples, rewards.get(config.task_reward, config)


def _calibration(model, tokenizer, examples, reward_fn, config, out: Path) -> dict:
    confidences, correct = answer_confidence(model, tokenizer, examples, reward_fn, config.max_new_tokens)
    ece, rows = expected_calibration_error(confidences, correct)
    reliability_diagram(rows, ece, out / "reliability.png", title=Path(config.model).name)
    return {"ece": ece, "accuracy": sum(correct) / len(correct), "mean_confidence": sum(confidences) / len(confidences),
            "bins": [{"low": lo, "high": hi, "count": n, "confidence": c, "accuracy": a} for lo, hi, n, c, a in rows]}


def _kl(model, tokenizer, prompts, config) -> dict:
    reference, _ = load_frozen(config.reference, config)
    return kl_to_reference(model, reference, tokenizer, prompts, samples_per_prompt=config.kl_samples,
                           max_new_tokens=config.max_new_tokens, seed=config.seed)


def _win_rate(model, tokenizer, prompts, texts, answers, judge, config, common) -> dict:
    other, other_tok = load_frozen(config.model_b, config)
    other_answers = generate(other, other_tok, prompts, Decoding(config.max_new_tokens, greedy=True),
                             desc="model_b responses", **{**common, "model_id": config.model_b})
    blank = [""] * len(prompts)
    return {**win_rate(judge(texts, [a["response"] for a in answers], blank),
                       judge(texts, [a["response"] for a in other_answers], blank)), "model_b": config.model_b}


def _safety(model, tokenizer, config, common) -> dict:
    judge, judge_scores = train_and_score(labelled_responses(), seed=config.seed)
    families = tuple(filter(None, config.template_families.split(",")))
    templates = jailbreak_templates(families) if config.requests_per_template else []
    result = run_safety(model, tokenizer, judge, harmful_requests()[: config.harmful_requests], templates,
                        benign_prompts("helpful-base", config.benign_requests) if config.benign_requests else [],
                        requests_per_template=config.requests_per_template,
                        decoding=Decoding(config.max_new_tokens, greedy=True), **common)
    result["judge_held_out"] = {name: vars(s) for name, s in judge_scores.items()}
    return result


def _gcg(model, tokenizer, config) -> dict:
    records = read_records("data:advbench/harmful_behaviors.csv")[: config.gcg]
    attacks = [gcg_attack(model, tokenizer, r.data["goal"], r.data["target"], steps=config.gcg_steps, seed=config.seed)
               for r in records]
    return {"requests": len(attacks), "target_reached": sum(a.target_reached for a in attacks) / len(attacks),
            "mean_loss_before": sum(a.initial_loss for a in attacks) / len(attacks),
            "mean_loss_after": sum(a.loss for a in attacks) / len(attacks),
            "examples": [{"suffix": a.suffix, "completion": a.completion[:200]} for a in attacks[:3]]}


def _separation(model, tokenizer, config) -> dict:
    n = config.separation_prompts
    harmful = [render_prompt(tokenizer, p, config.prompt_format) for p in harmful_requests()[:n]]
    benign = [render_prompt(tokenizer, p, config.prompt_format) for p in benign_prompts("helpful-base", n)]
    return separation(last_token_states(model, tokenizer, harmful), last_token_states(model, tokenizer, benign))
