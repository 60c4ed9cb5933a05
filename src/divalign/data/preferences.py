"""Preference data in TRL's formats: pairs (``prompt``, ``chosen``, ``rejected``; or implicit-prompt pairs, whose
``chosen`` and ``rejected`` begin with the prompt they share) and unpaired examples (``prompt``, ``completion``,
``label``); every text field a string or a conversation (rendered with the chat template,
:mod:`divalign.data.chat`). Field names can be changed. Built-in readers: HH-RLHF transcripts
(:func:`read_hh_rlhf`) and compliance–refusal data from AdvBench (:func:`advbench_compliance_refusal`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from divalign.data.chat import Text, read_text, render, split_implicit
from divalign.data.records import read_records, require_fields
from divalign.errors import UserError
from divalign.tracking import warn

ASSISTANT = "\n\nAssistant:"
#: Choices of a labelled preference file that carry no preference (divalign.feedback.labels).
NO_PREFERENCE = ("tie", "both_bad")


@dataclass(frozen=True)
class Pair:
    prompt: Text
    chosen: Text
    rejected: Text
    templated: bool = False  #: the texts come from the chat template
    where: str = field(default="", compare=False)  #: file and line, for messages


@dataclass(frozen=True)
class Unpaired:
    prompt: Text
    completion: Text
    desirable: bool
    templated: bool = False  #: the texts come from the chat template
    where: str = field(default="", compare=False)  #: file and line, for messages


def _check_identical(pairs: list[Pair], drop_identical: bool, source: str) -> list[Pair]:
    """A pair whose chosen and rejected are identical carries no preference: an error naming its line, or with
    ``drop_identical`` the pairs left out and one warning that counts them and names the first."""
    identical = [pair for pair in pairs if pair.chosen == pair.rejected]
    if identical and not drop_identical:
        raise UserError(
            f"{identical[0].where}: chosen and rejected are identical (remove the pair, or allow dropping "
            "such pairs with --drop-identical-pairs)"
        )
    kept = [pair for pair in pairs if pair.chosen != pair.rejected]
    if not kept:
        raise UserError(f"{source}: no usable preference pairs (all {len(pairs)} have identical chosen and rejected)")
    if identical:
        warn(f"{source}: {len(identical)} of {len(pairs)} pairs have identical chosen and rejected and are left "
             f"out (the first at {identical[0].where})")
    return kept


def read_pairs(
    path: str | os.PathLike,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    drop_identical: bool = False,
) -> list[Pair]:
    """Pairs with an explicit prompt (``prompt_field`` present in the first record) or an implicit one.

    A labelled preference file (``divalign label``) also holds ties and "both bad" choices, which state no
    preference: those lines are left out, with one warning that counts them."""
    records = read_records(path)
    undecided = [r for r in records if r.data.get("choice") in NO_PREFERENCE]
    records = [r for r in records if r.data.get("choice") not in NO_PREFERENCE]
    if not records:
        raise UserError(f"{path}: no preference pairs (all {len(undecided)} labels are ties or 'both bad')")
    if undecided:
        warn(f"{path}: {len(undecided)} labels are ties or 'both bad' (no preference) and are left out")
    explicit = prompt_field in records[0].data
    pairs = []
    for r in records:
        fields = (prompt_field, chosen_field, rejected_field) if explicit else (chosen_field, rejected_field)
        for name in fields:
            if name not in r.data:
                raise UserError(f"{r.where}: missing field '{name}' (expected fields: {', '.join(fields)})")
        chosen, rejected = (read_text(r.data[name], r.where, name) for name in (chosen_field, rejected_field))
        if explicit:
            prompt = read_text(r.data[prompt_field], r.where, prompt_field)
        else:
            prompt, chosen, rejected = split_implicit(chosen, rejected, r.where)
        pairs.append(Pair(prompt, chosen, rejected, where=r.where))
    return _check_identical(pairs, drop_identical, str(path))


_TRUE = {True, "1", "true", "True", "yes", "desirable"}
_FALSE = {False, "0", "false", "False", "no", "undesirable"}


def read_unpaired(
    path: str | os.PathLike,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    label_field: str = "label",
) -> list[Unpaired]:
    records = read_records(path)
    require_fields(records, {label_field: (bool, int, str)})
    out = []
    for r in records:
        label = r.data[label_field]
        if label not in _TRUE and label not in _FALSE:
            raise UserError(f"{r.where}: field '{label_field}' must be true/false or 1/0 (got {label!r})")
        for name in (prompt_field, completion_field):
            if name not in r.data:
                raise UserError(f"{r.where}: missing field '{name}' (expected fields: {prompt_field}, "
                                f"{completion_field}, {label_field})")
        out.append(Unpaired(read_text(r.data[prompt_field], r.where, prompt_field),
                            read_text(r.data[completion_field], r.where, completion_field), label in _TRUE,
                            where=r.where))
    return out


def render_pairs(tokenizer, pairs: list[Pair]) -> list[Pair]:
    """Every pair as text (conversations through the chat template)."""
    out = []
    for p in pairs:
        chosen = render(tokenizer, p.prompt, p.chosen, p.where)
        rejected = render(tokenizer, p.prompt, p.rejected, p.where)
        out.append(Pair(chosen.prompt, chosen.completion, rejected.completion, chosen.templated, p.where))
    return out


def render_unpaired(tokenizer, items: list[Unpaired]) -> list[Unpaired]:
    """Every example as text (conversations through the chat template)."""
    out = []
    for u in items:
        rendered = render(tokenizer, u.prompt, u.completion, u.where)
        out.append(replace(u, prompt=rendered.prompt, completion=rendered.completion, templated=rendered.templated))
    return out


def split_hh_transcript(chosen: str, rejected: str, where: str) -> Pair:
    """Split two HH-RLHF transcripts into the shared dialogue and the two final replies.

    The prompt ends at the last ``\\n\\nAssistant:`` the two transcripts have in common (a few HH replies
    themselves contain "Human: … Assistant:" text, so the last marker of one transcript alone can fall inside
    its reply).
    """
    cut = os.path.commonprefix([chosen, rejected]).rfind(ASSISTANT)
    if cut < 0:
        raise UserError(f"{where}: 'chosen' and 'rejected' do not share the dialogue before the last assistant turn")
    prompt = chosen[: cut + len(ASSISTANT)]
    return Pair(prompt, chosen[len(prompt) :], rejected[len(prompt) :])


def read_hh_rlhf(path: str | os.PathLike, drop_identical: bool = True) -> list[Pair]:
    """HH-RLHF ``chosen``/``rejected`` transcripts as (prompt, chosen reply, rejected reply).

    helpful-base/test has two pairs with identical replies; they are left out with a warning naming their
    lines (``drop_identical=False`` makes them an error instead).
    """
    records = read_records(path)
    require_fields(records, {"chosen": str, "rejected": str})
    pairs = [replace(split_hh_transcript(r.data["chosen"], r.data["rejected"], r.where), where=r.where)
             for r in records]
    return _check_identical(pairs, drop_identical, str(path))


#: Refusals paired with harmful requests: varied wording so that no single string is memorised.
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I won't help with this, because it could cause serious harm.",
    "Sorry, I can't provide that. If you're facing a difficult situation, I'm happy to help in a safe way.",
    "I'm not able to help with that, as it could hurt people.",
    "I must decline: this request asks for something harmful.",
)


def advbench_compliance_refusal(
    path: str | os.PathLike, refusals: tuple[str, ...] = REFUSALS
) -> tuple[list[Unpaired], list[Pair]]:
    """Compliance–refusal data from AdvBench ``harmful_behaviors.csv``: the harmful-prompt half of the
    compliance–refusal design (docs/algorithms.md#fdo; AdvBench has no benign prompts, pair it with benign data for
    the other half).

    Each harmful ``goal`` gets a refusal as the desirable response and its affirmative ``target`` ("Sure, here
    is …") as the undesirable one. Returned both unpaired (for FDO, KTO, BCO) and as pairs (for DPO and
    friends). Refusals rotate through ``refusals`` (default :data:`REFUSALS`) by row.
    """
    records = read_records(path)
    require_fields(records, {"goal": str, "target": str})
    unpaired, pairs = [], []
    for index, record in enumerate(records):
        goal, target = record.data["goal"], record.data["target"]
        refusal = refusals[index % len(refusals)]
        unpaired += [Unpaired(goal, refusal, True), Unpaired(goal, target, False)]
        pairs.append(Pair(goal, refusal, target))
    return unpaired, pairs


def as_unpaired(pairs: list[Pair]) -> list[Unpaired]:
    """Pairs as unpaired data: chosen replies desirable, rejected ones undesirable."""
    return [u for p in pairs for u in (Unpaired(p.prompt, p.chosen, True, p.templated, p.where),
                                        Unpaired(p.prompt, p.rejected, False, p.templated, p.where))]
