"""A judge model labels pairs (RLAIF, arXiv 2309.00267): a comparison prompt shows the request and the two
responses, and the judge's preference is the probability of its answer naming the first response against the
answer naming the second.

    P(first better) = exp ℓ_A / (exp ℓ_A + exp ℓ_B),   ℓ_X = log π_judge(answer_X | comparison prompt)

(``answer_X`` is the continuation " A" or " B"; with several tokens, the sum of their log-probabilities). Judges
favour a position, so each pair is judged in both orders: P(A better) is P(first better) with A shown first and
1 − P(first better) with B shown first. Where the two orders agree, that is the verdict; where they disagree, the
order decided and the label is a tie. Deviation from the paper, which averages the two probabilities into a soft
label: a preference file holds hard choices, so the mean is written next to the choice (``judge_probability``).

The comparison prompt is a template with the fields ``{prompt}``, ``{first}``, ``{second}`` (and ``{principle}``
for constitutional comparisons), replaceable by the user; a judge with a chat template sees it as a user message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch

from divalign.data.chat import is_conversation
from divalign.data.encoding import prompt_ids
from divalign.data.tokens import SequenceBatch, pad
from divalign.errors import UserError
from divalign.eval.generations import render_prompt
from divalign.feedback.labels import LabelFile, label_record
from divalign.feedback.pairs import LabelPair
from divalign.models import completion_logprobs
from divalign.tracking import progress, warn

DEFAULT_TEMPLATE = """Here is a request and two responses to it.

Request:
{prompt}

Response A:
{first}

Response B:
{second}

Which response is better: more helpful, more honest and less harmful? Answer A or B.
Answer:"""


def check_template(template: str, where: str, optional: tuple[str, ...] = ("prompt",)) -> None:
    """A comparison template must use {first} and {second}, and no field other than those and ``optional``."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise UserError(f"{where}: not a valid template ({exc}); write a literal brace as {{{{ or }}}}") from None
    missing = {"first", "second"} - fields
    if missing:
        raise UserError(f"{where}: the template must contain {{first}} and {{second}} (missing: "
                        f"{', '.join(sorted(missing))})")
    unknown = fields - {"first", "second", *optional}
    if unknown:
        raise UserError(f"{where}: unknown template field {{{min(unknown)}}} (allowed: first, second, "
                        f"{', '.join(optional)})")


def plain_text(prompt) -> str:
    """A prompt as the judge reads it: a conversation as "role: content" turns."""
    if isinstance(prompt, list):
        return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    if is_conversation(prompt):
        return "\n".join(f"{role}: {content}" for role, content in prompt)
    return prompt


@dataclass(frozen=True)
class Verdict:
    choice: str  #: "a", "b" or "tie" (the two orders disagree)
    a_first: float  #: P(A better) judged with A shown first
    b_first: float  #: P(A better) judged with B shown first

    @property
    def probability(self) -> float:
        return (self.a_first + self.b_first) / 2

    @property
    def verdicts(self) -> dict:
        return {"a_first": "a" if self.a_first > 0.5 else "b", "b_first": "a" if self.b_first > 0.5 else "b"}


def combine(first_with_a_first: float, first_with_b_first: float) -> Verdict:
    """The verdict on (A, B) from P(first better) with A shown first and with B shown first: A or B where the two
    orders agree, a tie where they do not."""
    a_first, b_first = first_with_a_first, 1.0 - first_with_b_first
    agree = (a_first > 0.5) == (b_first > 0.5)
    return Verdict(("a" if a_first > 0.5 else "b") if agree else "tie", a_first, b_first)


class Judge:
    """A causal LM that compares two responses (see the module docstring)."""

    def __init__(self, model, tokenizer, template: str = DEFAULT_TEMPLATE, answers: tuple[str, str] = (" A", " B"),
                 batch_size: int = 16):
        self.model, self.tokenizer, self.template, self.batch_size = model, tokenizer, template, batch_size
        self.answers = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]
        if not all(self.answers) or self.answers[0] == self.answers[1]:
            raise UserError(f"judge answers {answers!r} must tokenise to two different non-empty token sequences")
        self.context = getattr(model.config, "max_position_embeddings", 4096)
        self.cut = 0  #: comparisons whose beginning was cut to fit the judge's context

    def _ids(self, text: str) -> list[int]:
        rendered, templated = render_prompt(self.tokenizer, text, "{prompt}")
        ids = prompt_ids(self.tokenizer, rendered, templated)
        room = self.context - max(map(len, self.answers))
        if len(ids) > room:
            self.cut += 1
            ids = ids[len(ids) - room:]
        return ids

    @torch.no_grad()
    def first_preferred(self, comparisons: list[str]) -> list[float]:
        """P(first better) for each filled-in comparison prompt."""
        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(comparisons), self.batch_size):
            prompts = [self._ids(text) for text in comparisons[start:start + self.batch_size]]
            rows = [p for p in prompts for _ in self.answers]
            answers = [a for _ in prompts for a in self.answers]
            p_ids, p_mask = pad(rows, self.tokenizer.pad_token_id, left=True, device=device)
            a_ids, a_mask = pad(answers, self.tokenizer.pad_token_id, device=device)
            batch = SequenceBatch(torch.cat([p_ids, a_ids], 1), torch.cat([p_mask, a_mask], 1), p_ids.shape[1])
            logp, _ = completion_logprobs(self.model, batch)
            scores = logp.sum(-1).view(-1, 2)
            out += torch.softmax(scores.double(), -1)[:, 0].tolist()
        return out

    def compare(self, prompts: list, responses_a: list[str], responses_b: list[str],
                fields: list[dict] | None = None) -> list[Verdict]:
        """Verdicts on (A, B) for each prompt, judged in both orders; ``fields`` adds template fields per item."""
        fields = fields or [{} for _ in prompts]
        texts = [plain_text(p) for p in prompts]
        a_first = [self.template.format(prompt=t, first=a, second=b, **f)
                   for t, a, b, f in zip(texts, responses_a, responses_b, fields)]
        b_first = [self.template.format(prompt=t, first=b, second=a, **f)
                   for t, a, b, f in zip(texts, responses_a, responses_b, fields)]
        scores = self.first_preferred(a_first + b_first)
        return [combine(p, q) for p, q in zip(scores[: len(prompts)], scores[len(prompts):])]


def judge_pairs(judge: Judge, pairs: list[LabelPair], labels: LabelFile, annotator: str,
                show_progress: bool = True) -> int:
    """Label every pair ``annotator`` has not labelled yet, writing each batch as soon as it is judged (an
    interrupted run resumes where it stopped); returns how many were labelled."""
    done = labels.done(annotator)
    todo = [pair for pair in pairs if pair.id not in done]
    bar = progress(len(pairs), initial=len(pairs) - len(todo), desc="judging", enabled=show_progress)
    for start in range(0, len(todo), judge.batch_size):
        chunk = todo[start:start + judge.batch_size]
        verdicts = judge.compare([p.prompt for p in chunk], [p.response_a for p in chunk],
                                 [p.response_b for p in chunk])
        for pair, verdict in zip(chunk, verdicts):
            labels.append(label_record(pair, verdict.choice, annotator, None, source="judge", extra={
                "judge_verdicts": verdict.verdicts, "judge_probability": verdict.probability,
                "judge_probabilities": [verdict.a_first, verdict.b_first]}))
        bar.update(len(chunk))
    bar.close()
    if judge.cut:
        warn(f"{judge.cut} comparison prompts were longer than the judge's context and lost their beginning")
    return len(todo)
