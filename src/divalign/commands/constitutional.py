"""``divalign constitutional``: Constitutional AI data from a model and a constitution (docs/feedback.md).

Writes to its output folder ``sft.jsonl`` (prompt, completion: the final revision — the supervised stage),
``pairs.jsonl`` (the RL stage's preference pairs: revision over original, or two sampled responses judged against a
principle), ``transcripts.jsonl`` (every response, principle, critique and revision), and ``config.yaml``.
Generations are cached in ``generations.jsonl``, so ``--resume`` only generates what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from divalign.commands.common import (
    check_output_dir,
    check_prompt_format,
    configure_process,
    create_run_dir,
    load_frozen,
    positive,
    precision,
)
from divalign.data.prompts import read_prompt_file
from divalign.errors import UserError
from divalign.eval.generations import Decoding, GenerationCache, generate, render_prompt
from divalign.feedback.constitution import load_constitution
from divalign.feedback.judge import Judge, plain_text
from divalign.feedback.labels import label_record
from divalign.feedback.pairs import as_json_prompt, pairs_from_responses, write_jsonl
from divalign.models import check_causal_lm_folder, load_tokenizer
from divalign.tracking import warn
from divalign.trainers.options import DeviceOptions

PAIR_MODES = ("revision", "judge")


@dataclass
class ConstitutionalConfig(DeviceOptions):
    """Constitutional AI data: each prompt's response, critiques against principles drawn from a constitution, and
    revisions; SFT data of the revisions and preference pairs."""

    model: str = ""
    """Folder of the model that answers, critiques and revises (a Hugging Face causal LM)."""
    prompts: str = ""
    """Prompt file (JSONL/CSV/..., field prompt_field)."""
    prompt_field: str = "prompt"
    """Prompt field of --prompts."""
    prompts_limit: int = 100
    """How many prompts of --prompts to use."""
    constitution: str = ""
    """YAML file of principles (and optional templates); default: divalign's own constitution."""
    output_dir: str = "runs/constitutional"
    """Folder for sft.jsonl, pairs.jsonl, transcripts.jsonl."""
    resume: bool = False
    """Reuse the generations already cached in output_dir."""
    revisions: int = 1
    """Critique-and-revision rounds per prompt (each with a principle drawn afresh)."""
    pairs: str = "revision"
    """Preference pairs: revision (the final revision over the original response) or judge (two sampled responses,
    labelled by --judge against a drawn principle's comparison question, in both orders)."""
    judge: str = ""
    """Judge model folder for --pairs judge (default: --model itself)."""
    max_new_tokens: int = 64
    """Budget of each response, critique and revision."""
    sample: bool = False
    """Sample responses, critiques and revisions at --temperature instead of decoding greedily."""
    temperature: float = 1.0
    """Sampling temperature (with --sample, and of the two responses of judged pairs)."""
    prompt_format: str = "{prompt}"
    """How a request is shown to a model without a chat template, e.g. 'User: {prompt}\\nAssistant:'."""
    seed: int = 0
    """Seed of the principle draws and of sampling."""
    batch_size: int = 16
    """Prompts per generation batch."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show progress bars."""


def run(config: ConstitutionalConfig) -> dict:
    if not config.model:
        raise UserError("no model: give --model FOLDER")
    if not config.prompts:
        raise UserError("no prompts: give --prompts FILE")
    positive(config, "prompts_limit", "revisions", "max_new_tokens", "batch_size")
    if config.pairs not in PAIR_MODES:
        raise UserError(f"pairs: expected one of {', '.join(PAIR_MODES)} (got '{config.pairs}')")
    if config.temperature <= 0:
        raise UserError(f"temperature must be > 0 (got {config.temperature})")
    check_prompt_format(config.prompt_format)
    constitution = load_constitution(config.constitution or None)
    examples = read_prompt_file(config.prompts, config.prompt_field, answers=False)[: config.prompts_limit]
    judge_folder = config.judge or config.model
    for folder in {config.model, judge_folder if config.pairs == "judge" else config.model}:
        check_causal_lm_folder(folder, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
    for ex in examples:
        render_prompt(tokenizer, ex.prompt, config.prompt_format, ex.where or "prompt")
    out = check_output_dir(config.output_dir, config.resume)
    configure_process(config.threads, config.progress)
    torch.manual_seed(config.seed)
    model, tokenizer = load_frozen(config.model, config)
    create_run_dir(out, config)
    cache = GenerationCache(out / "generations.jsonl")
    decoding = (Decoding(config.max_new_tokens, greedy=False, temperature=config.temperature, seed=config.seed)
                if config.sample else Decoding(config.max_new_tokens, greedy=True))
    common = {"cache": cache, "model_id": config.model, "batch_size": config.batch_size,
              "show_progress": config.progress}
    prompts = [ex.prompt for ex in examples]
    texts = [plain_text(p) for p in prompts]

    def answer(requests, desc, prompt_format="{prompt}"):
        return [r["response"].strip() for r in generate(model, tokenizer, requests, decoding, desc=desc,
                                                        prompt_format=prompt_format, **common)]

    with precision(config):
        originals = answer(prompts, "responses", config.prompt_format)
        current = list(originals)
        rounds = [[] for _ in prompts]
        for r in range(config.revisions):
            drawn = [constitution.draw(config.seed, i, r) for i in range(len(prompts))]
            critiques = answer([constitution.critique_prompt(t, c, p) for t, c, p in zip(texts, current, drawn)],
                               f"critiques {r + 1}")
            revised = answer([constitution.revision_prompt(t, c, p, k)
                              for t, c, p, k in zip(texts, current, drawn, critiques)], f"revisions {r + 1}")
            for i, (principle, critique, revision) in enumerate(zip(drawn, critiques, revised)):
                rounds[i].append({"principle": principle.name, "critique": critique, "revision": revision})
                if revision:  # an empty revision keeps the response it revised
                    current[i] = revision
        pairs = _pairs(config, constitution, model, tokenizer, prompts, originals, current, rounds, common)
    empty = sum(not any(step["revision"] for step in steps) for steps in rounds)
    if empty:
        warn(f"{empty} of {len(prompts)} prompts got only empty revisions; their SFT example is the original response")
    write_jsonl(out / "transcripts.jsonl", [
        {"prompt": as_json_prompt(p), "response": o, "rounds": steps, "final": f}
        for p, o, steps, f in zip(prompts, originals, rounds, current)])
    sft_rows = [{"prompt": as_json_prompt(p), "completion": f} for p, f in zip(prompts, current) if f]
    write_jsonl(out / "sft.jsonl", sft_rows)
    write_jsonl(out / "pairs.jsonl", pairs)
    decisive = sum("chosen" in row for row in pairs)
    print(f"wrote {len(sft_rows)} SFT examples to {out / 'sft.jsonl'} and {len(pairs)} pairs ({decisive} with a "
          f"preference) to {out / 'pairs.jsonl'}")
    return {"sft": len(sft_rows), "pairs": len(pairs), "preferences": decisive}


def _pairs(config, constitution, model, tokenizer, prompts, originals, finals, rounds, common) -> list[dict]:
    """The RL stage's pairs (see ConstitutionalConfig.pairs)."""
    if config.pairs == "revision":
        rows = [{"prompt": as_json_prompt(p), "chosen": f, "rejected": o,
                 "principles": [step["principle"] for step in steps]}
                for p, o, f, steps in zip(prompts, originals, finals, rounds) if f and f != o]
        if len(rows) < len(prompts):
            warn(f"{len(prompts) - len(rows)} of {len(prompts)} prompts were not changed by their revisions and "
                 "have no pair")
        return rows
    sampled = Decoding(config.max_new_tokens, greedy=False, temperature=config.temperature, seed=config.seed + 1)
    both = generate(model, tokenizer, prompts, sampled, samples=2, desc="pairs", prompt_format=config.prompt_format,
                    **common)
    pairs, same = pairs_from_responses([as_json_prompt(p) for p in prompts], [r["response"] for r in both[0::2]],
                                       [r["response"] for r in both[1::2]], config.model, config.model)
    if same:
        warn(f"{same} of {len(prompts)} prompts got the same response twice and have no pair")
    judge_model, judge_tokenizer = (model, tokenizer) if not config.judge else load_frozen(config.judge, config)
    judge = Judge(judge_model, judge_tokenizer, constitution.templates["comparison"], batch_size=config.batch_size)
    index = {json.dumps(as_json_prompt(p)): i for i, p in enumerate(prompts)}
    drawn = [constitution.draw(config.seed, index[json.dumps(pair.prompt)], config.revisions) for pair in pairs]
    verdicts = judge.compare([pair.prompt for pair in pairs], [pair.response_a for pair in pairs],
                             [pair.response_b for pair in pairs], [{"principle": p.comparison} for p in drawn])
    annotator = f"judge:{Path(config.judge or config.model).resolve().name}"
    return [label_record(pair, v.choice, annotator, None, source="judge", extra={
        "principle": principle.name, "judge_verdicts": v.verdicts, "judge_probability": v.probability})
        for pair, v, principle in zip(pairs, verdicts, drawn)]
