"""Constitutional AI data (arXiv 2212.08073): a model answers, critiques its answer against a principle drawn from
a written constitution, and revises it. The revisions are the supervised stage's data; revision-over-original
pairs, or pairs of two sampled responses labelled by a judge asked the principle's comparison question, are the RL
stage's AI preference data.

A constitution is a YAML file: ``principles``, each with ``name``, ``critique`` (the critique request),
``revision`` (the revision request) and ``comparison`` (the judge's question, for judged pairs), and optional
``templates`` that replace the prompts (fields listed in :data:`TEMPLATE_FIELDS`). divalign ships one
(``constitution.yaml`` next to this module). Deviation from the paper: each critique-and-revision round draws one
principle at random (as the paper does), seeded by (seed, prompt, round) so that a rerun draws the same ones; the
paper's few-shot examples are left to the user's templates.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from divalign.errors import UserError
from divalign.feedback.judge import check_template

DEFAULT = resources.files("divalign.feedback") / "constitution.yaml"
#: the fields each template must use (and may use)
TEMPLATE_FIELDS = {
    "critique": ("prompt", "response", "critique_request"),
    "revision": ("prompt", "response", "critique_request", "critique", "revision_request"),
}


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str
    comparison: str


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    templates: dict[str, str]

    def draw(self, seed: int, prompt_index: int, round_index: int) -> Principle:
        """The principle of one critique-and-revision round (the same on every rerun)."""
        return random.Random(f"{seed}-{prompt_index}-{round_index}").choice(self.principles)

    def critique_prompt(self, prompt: str, response: str, principle: Principle) -> str:
        return self.templates["critique"].format(prompt=prompt, response=response,
                                                 critique_request=principle.critique)

    def revision_prompt(self, prompt: str, response: str, principle: Principle, critique: str) -> str:
        return self.templates["revision"].format(prompt=prompt, response=response, critique_request=principle.critique,
                                                 critique=critique, revision_request=principle.revision)


def _check_fields(template: str, name: str, where: str) -> None:
    try:
        used = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise UserError(f"{where}: templates.{name} is not a valid template ({exc})") from None
    allowed = TEMPLATE_FIELDS[name]
    if used - set(allowed):
        raise UserError(f"{where}: templates.{name} uses unknown field {{{min(used - set(allowed))}}} (allowed: "
                        f"{', '.join(allowed)})")
    if set(allowed) - used:
        raise UserError(f"{where}: templates.{name} must use {{{min(set(allowed) - used)}}}")


def _text(item: dict, key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field '{key}' must be a non-empty string")
    return value.strip()


def load_constitution(path: str | None = None) -> Constitution:
    """The constitution of ``path`` (the built-in one when None), with the built-in templates for those it leaves
    out; one-line errors naming the file and the field."""
    where = str(path) if path else "the built-in constitution"
    if path and not Path(path).is_file():
        raise UserError(f"{path}: constitution file does not exist")
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8") if path else DEFAULT.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise UserError(f"{where}: expected a mapping with a non-empty list 'principles'")
    unknown = set(data) - {"principles", "templates"}
    if unknown:
        raise UserError(f"{where}: unknown key '{min(unknown)}' (expected: principles, templates)")
    principles, names = [], set()
    for i, item in enumerate(data["principles"]):
        at = f"{where}: principles[{i}]"
        if not isinstance(item, dict):
            raise UserError(f"{at}: expected a mapping with name, critique, revision, comparison")
        principle = Principle(*(_text(item, key, at) for key in ("name", "critique", "revision", "comparison")))
        if principle.name in names:
            raise UserError(f"{at}: the name '{principle.name}' is used twice")
        names.add(principle.name)
        principles.append(principle)
    defaults = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))["templates"]
    given = data.get("templates") or {}
    if not isinstance(given, dict):
        raise UserError(f"{where}: 'templates' must be a mapping")
    if set(given) - set(defaults):
        raise UserError(f"{where}: unknown template '{min(set(given) - set(defaults))}' (expected: "
                        f"{', '.join(defaults)})")
    templates = {**defaults, **given}
    for name, template in templates.items():
        if not isinstance(template, str):
            raise UserError(f"{where}: templates.{name} must be a string")
        if name == "comparison":
            check_template(template, f"{where}: templates.comparison", ("prompt", "principle"))
        else:
            _check_fields(template, name, where)
    return Constitution(tuple(principles), templates)
