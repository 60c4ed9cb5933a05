"""Supervised fine-tuning data, in TRL's formats: language modeling (``text``, or a conversation in ``messages``)
and prompt-completion (``prompt`` and ``completion``, each a string or a conversation).

The loss covers the completion: all of a ``text``; the last message of a ``messages`` conversation (the assistant's
reply, rendered by the chat template with its end-of-turn markup); the ``completion``. Conversations are rendered
with the tokenizer's chat template (:mod:`divalign.data.chat`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from divalign.data.chat import Rendered, Text, read_conversation, read_text, render
from divalign.data.records import read_records
from divalign.errors import UserError


@dataclass(frozen=True)
class Demonstration:
    prompt: Text  #: "" for language-modeling text
    completion: Text
    where: str = field(default="", compare=False)  #: file and line, for messages


def read_sft(
    path: str | os.PathLike,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    messages_field: str = "messages",
    text_field: str = "text",
) -> list[Demonstration]:
    """The file's format is read from its first record: ``messages_field`` (a conversation), ``text_field`` without
    ``prompt_field`` (plain text), or ``prompt_field`` with ``completion_field``."""
    records = read_records(path)
    first = records[0].data
    if messages_field in first:
        return [_conversation(r.data.get(messages_field), r.where, messages_field) for r in records]
    if text_field in first and prompt_field not in first:
        return [Demonstration("", read_text(r.data.get(text_field), r.where, text_field, conversation_ok=False),
                              r.where) for r in records]
    out = []
    for r in records:
        for name in (prompt_field, completion_field):
            if name not in r.data:
                raise UserError(f"{r.where}: missing field '{name}' (expected '{prompt_field}' and "
                                f"'{completion_field}', '{text_field}' or '{messages_field}')")
        out.append(Demonstration(read_text(r.data[prompt_field], r.where, prompt_field),
                                 read_text(r.data[completion_field], r.where, completion_field), r.where))
    return out


def _conversation(value, where: str, name: str) -> Demonstration:
    if not isinstance(value, list):
        raise UserError(f"{where}: field '{name}' must be a list of messages, got {type(value).__name__}")
    turns = read_conversation(value, where, name)
    if turns[-1][0] != "assistant":
        raise UserError(f"{where}: field '{name}': the last message must be the assistant's reply (got role "
                        f"'{turns[-1][0]}')")
    return Demonstration(turns[:-1], turns[-1:], where)


def render_demonstrations(tokenizer, items: list[Demonstration]) -> list[Rendered]:
    """Every demonstration as text (conversations through the chat template)."""
    return [render(tokenizer, item.prompt, item.completion, item.where) for item in items]
