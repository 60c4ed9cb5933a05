"""Supervised fine-tuning data: prompt/completion pairs or chat ``messages``, rendered with the tokenizer.

Chat records hold ``messages``: a list of ``{"role": ..., "content": ...}`` whose last message is the
assistant's reply. The tokenizer's chat template renders every earlier message plus the generation prompt as
the prompt; the completion is what the template adds for the reply — its text and the template's own
end-of-turn markup — the only part the loss sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from divalign.data.records import read_records, require_fields
from divalign.errors import UserError


@dataclass(frozen=True)
class Demonstration:
    prompt: str
    completion: str


@dataclass(frozen=True)
class Chat:
    messages: tuple[tuple[str, str], ...]  #: (role, content), the last one the assistant's reply
    where: str


def read_sft(
    path: str | os.PathLike,
    prompt_field: str = "prompt",
    completion_field: str = "completion",
    messages_field: str = "messages",
) -> list[Demonstration | Chat]:
    """Chat records if the first record has ``messages_field``, else prompt/completion records."""
    records = read_records(path)
    if messages_field in records[0].data:
        require_fields(records, {messages_field: list})
        return [_chat(r.data[messages_field], f"{r.where}: field '{messages_field}'", r.where) for r in records]
    require_fields(records, {prompt_field: str, completion_field: str})
    return [Demonstration(r.data[prompt_field], r.data[completion_field]) for r in records]


def _chat(messages: list, where_field: str, where: str) -> Chat:
    if not messages:
        raise UserError(f"{where_field}: empty conversation")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where_field}[{i}]: expected an object with string 'role' and 'content'")
        turns.append((m["role"], m["content"]))
    if turns[-1][0] != "assistant":
        raise UserError(f"{where_field}: the last message must be the assistant's reply (got role '{turns[-1][0]}')")
    return Chat(tuple(turns), where)


def render(tokenizer, item: Demonstration | Chat) -> tuple[str, str, bool]:
    """(prompt text, completion text, whether the texts come from the chat template).

    Plain completions get the tokenizer's end-of-sequence token appended when tokenised; templated ones already
    end with whatever the template closes a reply with.
    """
    if isinstance(item, Demonstration):
        return item.prompt, item.completion, False
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"{item.where}: chat 'messages' need a tokenizer with a chat template, and this "
            "tokenizer has none (add one to tokenizer_config.json, or use prompt/completion data)"
        )
    messages = [{"role": role, "content": content} for role, content in item.messages]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise UserError(
            f"{item.where}: the chat template renders the conversation so that it does not start "
            "with the rendered prompt; the reply cannot be separated from it"
        )
    return prompt, full[len(prompt) :], True
