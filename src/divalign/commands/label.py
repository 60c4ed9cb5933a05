"""``divalign label``: collect pairwise preferences — from people on a local web page, or from a judge model
(``--judge``) — into a preference file the training commands read as it is (docs/feedback.md).

Pairs come from a pairs file, or are generated first from one model (two sampled responses per prompt) or two
(``--model-a``, ``--model-b``: an A/B study) and written to the pairs file, which a restart then reuses.
"""

from __future__ import annotations

import json
import sys
import webbrowser
from dataclasses import dataclass
from pathlib import Path

import torch

from divalign.commands.common import check_prompt_format, configure_process, load_frozen, positive, precision
from divalign.data.prompts import read_prompt_file
from divalign.errors import UserError
from divalign.eval.generations import Decoding, generate, render_prompt
from divalign.feedback.agreement import summary
from divalign.feedback.judge import DEFAULT_TEMPLATE, Judge, check_template, judge_pairs
from divalign.feedback.labels import LabelFile
from divalign.feedback.pairs import (
    LabelPair,
    as_json_prompt,
    pairs_from_responses,
    read_label_pairs,
    write_label_pairs,
)
from divalign.feedback.server import LabellingSession, serve
from divalign.models import check_causal_lm_folder, load_tokenizer
from divalign.tracking import warn
from divalign.trainers.options import DeviceOptions


@dataclass
class LabelConfig(DeviceOptions):
    """Label pairs of responses on a local web page (or with a judge model, --judge) into a TRL-format preference
    file."""

    pairs: str = ""
    """Pairs file (JSONL: prompt, response_a, response_b; optional model_a, model_b, id). With --model-a it is where
    the generated pairs are written (default: next to --output), and reused if it already exists."""
    output: str = ""
    """Preference file the labels are appended to (prompt, chosen, rejected, annotator, time, pair_id, choice)."""
    model_a: str = ""
    """Generate the pairs: responses of this model folder to --prompts (two samples each without --model-b)."""
    model_b: str = ""
    """A/B study: the second response of each pair comes from this model folder."""
    prompts: str = ""
    """Prompt file for generated pairs (JSONL/CSV/..., field prompt_field)."""
    prompt_field: str = "prompt"
    """Prompt field of --prompts."""
    prompts_limit: int = 50
    """How many prompts of --prompts to generate pairs for."""
    max_new_tokens: int = 64
    """Response budget of generated responses."""
    temperature: float = 1.0
    """Sampling temperature of generated responses (two models answer greedily unless --sample)."""
    sample: bool = False
    """With two models, sample their responses instead of decoding greedily."""
    prompt_format: str = "{prompt}"
    """How a request is shown to a model without a chat template, e.g. 'User: {prompt}\\nAssistant:'."""
    judge: str = ""
    """Label with this judge model folder (RLAIF) instead of the web page."""
    judge_template: str = ""
    """Text file of the judge's comparison prompt, with {prompt}, {first} and {second} (default: a built-in one)."""
    judge_answer_a: str = " A"
    """The judge's answer naming the first response."""
    judge_answer_b: str = " B"
    """The judge's answer naming the second response."""
    annotator: str = ""
    """Rater name: prefilled on the page; a judge's (default: judge:FOLDER_NAME)."""
    summary: bool = False
    """Print the summary of --output (agreement, position bias, win rates) as JSON and exit."""
    host: str = "127.0.0.1"
    """Address the page is served on (127.0.0.1: this machine only)."""
    port: int = 8765
    """Port of the page (0: any free port)."""
    browser: bool = True
    """Open the page in the default browser."""
    seed: int = 0
    """Seed of the left/right shuffle and of sampled responses."""
    batch_size: int = 16
    """Prompts per generation batch and comparisons per judge batch."""
    trust_remote_code: bool = False
    """Allow model folders that ship their own modelling code."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    progress: bool = True
    """Show progress bars."""


def default_pairs_path(output: str) -> Path:
    path = Path(output)
    return path.with_name(path.name.removesuffix(".jsonl") + ".pairs.jsonl")


def validate(config: LabelConfig) -> None:
    if not config.output:
        raise UserError("no output: give --output FILE (the preference file labels are appended to)")
    if config.model_b and not config.model_a:
        raise UserError("--model-b needs --model-a (the other side of the A/B study)")
    if not config.summary and not config.pairs and not config.model_a:
        raise UserError("no pairs: give --pairs FILE, or --model-a FOLDER with --prompts FILE to generate them")
    if config.model_a and not config.prompts:
        raise UserError("--model-a needs --prompts (the requests the models answer)")
    positive(config, "prompts_limit", "max_new_tokens", "batch_size")
    if not 0 <= config.port <= 65535:
        raise UserError(f"port must be in [0, 65535] (got {config.port})")
    if config.temperature <= 0:
        raise UserError(f"temperature must be > 0 (got {config.temperature})")
    check_prompt_format(config.prompt_format)


def judge_template(config: LabelConfig) -> str:
    if not config.judge_template:
        return DEFAULT_TEMPLATE
    path = Path(config.judge_template)
    if not path.is_file():
        raise UserError(f"{path}: judge template file does not exist")
    try:
        template = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc})") from None
    check_template(template, str(path))
    return template


def generate_pairs(config: LabelConfig, path: Path) -> list[LabelPair]:
    """Responses of model A (and B) to the prompts, written to ``path`` as a pairs file."""
    examples = read_prompt_file(config.prompts, config.prompt_field, answers=False)[: config.prompts_limit]
    for folder in filter(None, (config.model_a, config.model_b)):
        check_causal_lm_folder(folder, config.trust_remote_code)
    tokenizer = load_tokenizer(config.model_a, config.trust_remote_code)
    for ex in examples:  # a conversation the template cannot render fails before any model loads
        render_prompt(tokenizer, ex.prompt, config.prompt_format, ex.where or "prompt")
    prompts = [ex.prompt for ex in examples]
    common = {"prompt_format": config.prompt_format, "batch_size": config.batch_size,
              "show_progress": config.progress}
    sampled = Decoding(config.max_new_tokens, greedy=False, temperature=config.temperature, seed=config.seed)
    model, tokenizer = load_frozen(config.model_a, config)
    with precision(config):
        if config.model_b:
            decoding = sampled if config.sample else Decoding(config.max_new_tokens, greedy=True)
            first = generate(model, tokenizer, prompts, decoding, model_id=config.model_a, desc="model A", **common)
            del model
            other, other_tokenizer = load_frozen(config.model_b, config)
            second = generate(other, other_tokenizer, prompts, decoding, model_id=config.model_b, desc="model B",
                              **common)
            responses = [r["response"] for r in first], [r["response"] for r in second]
        else:
            both = generate(model, tokenizer, prompts, sampled, samples=2, model_id=config.model_a,
                            desc="responses", **common)
            responses = [r["response"] for r in both[0::2]], [r["response"] for r in both[1::2]]
    pairs, same = pairs_from_responses([as_json_prompt(p) for p in prompts], *responses, config.model_a,
                                       config.model_b or config.model_a)
    if same:
        warn(f"{same} of {len(prompts)} prompts got the same response twice and have no pair")
    if not pairs:
        raise UserError(f"{config.prompts}: every prompt got two identical responses; nothing to label")
    write_label_pairs(pairs, path)
    print(f"wrote {len(pairs)} pairs to {path}")
    return pairs


def _load_pairs(config: LabelConfig) -> list[LabelPair]:
    if not config.model_a:
        return read_label_pairs(config.pairs)
    path = Path(config.pairs) if config.pairs else default_pairs_path(config.output)
    if path.exists():
        print(f"using the pairs already generated in {path}")
        return read_label_pairs(path)
    return generate_pairs(config, path)


def _describe(result: dict) -> list[str]:
    lines = []
    for name, rater in result["raters"].items():
        counts = ", ".join(f"{k} {v}" for k, v in rater["choices"].items())
        lines.append(f"{name} ({rater['source']}): {rater['labelled']} pairs ({counts})")
    for name, bias in result["position_bias"].items():
        if "left_share" in bias and bias["left_share"] is not None:
            low, high = bias["left_share_ci95"]
            lines.append(f"{name}: {bias['left_share']:.1%} of {bias['decisive']} choices went to the left side "
                         f"(95 % interval {low:.1%}–{high:.1%}; 50 % is no position bias)")
        elif bias.get("order_disagreement") is not None:
            lines.append(f"{name}: the order changed the verdict on {bias['order_disagreement']:.1%} of "
                         f"{bias['pairs']} pairs; {bias['first_position_share']:.1%} of verdicts chose the first")
    for row in result["agreement"]:
        kappa = "undefined" if row["kappa"] is None else f"{row['kappa']:.3f}"
        lines.append(f"{' / '.join(row['raters'])}: Cohen's kappa {kappa}, agreement {row['agreement']:.1%} on "
                     f"{row['shared_pairs']} shared pairs")
    for row in result["win_rates"]:
        low, high = row["win_rate_ci95"]
        lines.append(f"win rate of {row['model_a']} over {row['model_b']} ({row['raters']}): {row['win_rate']:.1%} "
                     f"(95 % Wilson {low:.1%}–{high:.1%}; {row['wins']} wins, {row['ties']} ties, "
                     f"{row['losses']} losses)")
    return lines


def run(config: LabelConfig) -> dict | None:
    validate(config)
    template = judge_template(config) if config.judge else ""
    if config.summary and not Path(config.output).exists():
        raise UserError(f"{config.output}: file does not exist (nothing labelled yet)")
    labels = LabelFile(config.output)
    if config.summary:
        ids = [p.id for p in read_label_pairs(config.pairs)] if config.pairs else sorted(
            {label.pair_id for label in labels.labels})
        result = summary(labels.labels, ids)
        print(json.dumps(result, indent=2))
        return result
    if config.judge:
        check_causal_lm_folder(config.judge, config.trust_remote_code)
    configure_process(config.threads, config.progress)
    torch.manual_seed(config.seed)
    pairs = _load_pairs(config)
    if config.judge:
        model, tokenizer = load_frozen(config.judge, config)
        annotator = config.annotator or f"judge:{Path(config.judge).resolve().name}"
        judge = Judge(model, tokenizer, template, (config.judge_answer_a, config.judge_answer_b), config.batch_size)
        with precision(config):
            count = judge_pairs(judge, pairs, labels, annotator, config.progress)
        print(f"{annotator} labelled {count} pairs into {config.output}")
        result = summary(labels.labels, [p.id for p in pairs])
        print("\n".join(_describe(result)))
        return result
    session = LabellingSession(pairs, labels, config.seed)

    def ready(url: str) -> None:
        page = url + (f"?annotator={config.annotator}" if config.annotator else "")
        print(f"labelling {len(pairs)} pairs into {config.output} at {url} (summary: {url}summary); Ctrl-C stops",
              flush=True)
        if config.browser:
            webbrowser.open(page)

    if config.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"serving on {config.host}: other machines can reach the page and write labels")
    try:
        serve(session, config.host, config.port, ready)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a labelling session ends; every choice is already on disk
    print("\n".join(_describe(session.summary())), file=sys.stderr)
    return None
