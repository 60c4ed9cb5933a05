"""The pairs to be labelled: two responses to one prompt, read from a JSONL file or generated from one or two
models, each with a stable id so that labels, restarts and several annotators refer to the same pair.

A pairs file has ``prompt``, ``response_a`` and ``response_b`` (strings, or a conversation for the prompt), and
optionally ``model_a``, ``model_b`` (what produced each side: an A/B study) and ``id``. Without ``id`` a pair's id
is a hash of its texts, so the same file gives the same ids every time it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from divalign.data.chat import read_text
from divalign.data.records import read_records
from divalign.errors import UserError

REQUIRED = ("prompt", "response_a", "response_b")


@dataclass(frozen=True)
class LabelPair:
    id: str
    prompt: str | list  #: as written in the file: a string or a list of {"role", "content"} messages
    response_a: str
    response_b: str
    model_a: str = ""
    model_b: str = ""
    where: str = ""  #: file and line, for messages

    def as_json(self) -> dict:
        """The pair as the page and the pairs file hold it."""
        return {"id": self.id, "prompt": self.prompt, "response_a": self.response_a, "response_b": self.response_b,
                "model_a": self.model_a, "model_b": self.model_b}


def content_id(prompt, response_a: str, response_b: str) -> str:
    """A pair's id from its texts (the first 16 hex digits of a SHA-256)."""
    payload = json.dumps([prompt, response_a, response_b], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _string(record, name: str, required: bool) -> str:
    value = record.data.get(name, "")
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{record.where}: field '{name}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise UserError(f"{record.where}: field '{name}' is empty")
    return value


def read_label_pairs(path: str | os.PathLike) -> list[LabelPair]:
    """Every pair of a pairs file, in order; one-line errors for a missing or malformed field, two responses that
    are the same text, or an id used twice."""
    pairs, seen = [], {}
    for record in read_records(path):
        missing = [name for name in REQUIRED if name not in record.data]
        if missing:
            raise UserError(f"{record.where}: missing field '{missing[0]}' (expected fields: {', '.join(REQUIRED)}; "
                            "optional: model_a, model_b, id)")
        read_text(record.data["prompt"], record.where, "prompt")
        a, b = _string(record, "response_a", True), _string(record, "response_b", True)
        if a == b:
            raise UserError(f"{record.where}: response_a and response_b are the same text (nothing to compare)")
        prompt = record.data["prompt"]
        pair_id = record.data.get("id")
        if pair_id is None:
            pair_id = content_id(prompt, a, b)
        elif not isinstance(pair_id, (str, int)) or isinstance(pair_id, bool) or not str(pair_id).strip():
            raise UserError(f"{record.where}: field 'id' must be a non-empty string or an integer")
        pair_id = str(pair_id)
        if pair_id in seen:
            raise UserError(f"{record.where}: pair id '{pair_id}' is already used at {seen[pair_id]} (the same "
                            "prompt and responses twice, or a repeated id)")
        seen[pair_id] = record.where
        pairs.append(LabelPair(pair_id, prompt, a, b, _string(record, "model_a", False),
                               _string(record, "model_b", False), record.where))
    return pairs


def as_json_prompt(prompt):
    """A prompt as a JSON file holds it: a conversation read as (role, content) turns back to a list of messages."""
    return [{"role": r, "content": c} for r, c in prompt] if isinstance(prompt, tuple) else prompt


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write a JSONL file atomically: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def write_label_pairs(pairs: list[LabelPair], path: str | os.PathLike) -> None:
    """Write a pairs file (JSONL), atomically."""
    write_jsonl(path, [p.as_json() for p in pairs])


def pairs_from_responses(prompts: list, responses_a: list[str], responses_b: list[str], model_a: str,
                         model_b: str) -> tuple[list[LabelPair], int]:
    """Pairs of two responses to each prompt, leaving out prompts whose two responses are the same text; returns
    the pairs and how many prompts were left out."""
    pairs = [LabelPair(content_id(p, a, b), p, a, b, model_a, model_b)
             for p, a, b in zip(prompts, responses_a, responses_b) if a != b]
    unique = list({p.id: p for p in pairs}.values())
    return unique, len(prompts) - len(unique)
