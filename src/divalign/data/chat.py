"""Conversational data: fields that hold a list of ``{"role", "content"}`` messages instead of a string (TRL's
conversational formats), and their rendering into text with the tokenizer's chat template.

A field of a record is :data:`Text`: a non-empty string, or a conversation. A prompt that is a conversation is
rendered with the generation prompt; a completion that is a conversation is what the template adds to the
prompt's rendering for those turns (the reply and the template's own end-of-turn markup). Rendered text already
holds the template's special tokens, so it is tokenised without adding any (``templated``). Every row is rendered
before a model loads, so a template that fails on row 900 fails before training, naming the row.
"""

from __future__ import annotations

from dataclasses import dataclass

from divalign.errors import UserError

Message = tuple[str, str]  #: (role, content)
Conversation = tuple[Message, ...]
Text = str | Conversation


def read_text(value, where: str, field: str, conversation_ok: bool = True) -> Text:
    """A record's field as :data:`Text`; a one-line error for anything else (a blank string included)."""
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: field '{field}' is empty")
        return value
    if conversation_ok and isinstance(value, list):
        return read_conversation(value, where, field)
    expected = "a string or a list of messages" if conversation_ok else "a string"
    raise UserError(f"{where}: field '{field}' must be {expected}, got {type(value).__name__}")


def read_conversation(messages: list, where: str, field: str) -> Conversation:
    if not messages:
        raise UserError(f"{where}: field '{field}' is an empty conversation")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: field '{field}'[{i}]: expected an object with string 'role' and 'content'")
        turns.append((m["role"], m["content"]))
    return tuple(turns)


def is_conversation(text: Text) -> bool:
    return isinstance(text, tuple)


@dataclass(frozen=True)
class Rendered:
    prompt: str
    completion: str
    templated: bool  #: the text comes from the chat template (tokenise it without adding special tokens)


def render(tokenizer, prompt: Text, completion: Text | None, where: str) -> Rendered:
    """Prompt and completion as text: strings as they are; conversations through the chat template (both or
    neither must be conversations). ``completion`` None renders a prompt alone."""
    if not is_conversation(prompt) and (completion is None or not is_conversation(completion)):
        return Rendered(prompt, completion or "", False)
    if completion is not None and is_conversation(prompt) != is_conversation(completion):
        raise UserError(f"{where}: the prompt and the completion must both be strings or both be conversations")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: conversational data needs a tokenizer with a chat template, and this tokenizer has "
                        "none (add one to tokenizer_config.json, or use plain-text data)")
    prompt_text = _apply(tokenizer, prompt, where, generation_prompt=True)
    if completion is None:
        return Rendered(prompt_text, "", True)
    full = _apply(tokenizer, prompt + completion, where, generation_prompt=False)
    if not full.startswith(prompt_text):
        raise UserError(f"{where}: the chat template renders the conversation so that it does not start with the "
                        "rendered prompt; the reply cannot be separated from it")
    return Rendered(prompt_text, full[len(prompt_text):], True)


def _apply(tokenizer, conversation: Conversation, where: str, generation_prompt: bool) -> str:
    messages = [{"role": role, "content": content} for role, content in conversation]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    except Exception as exc:  # noqa: BLE001 (a template is the user's code: any failure is theirs to see)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: the chat template fails on this conversation ({detail})") from None


def split_implicit(chosen: Text, rejected: Text, where: str) -> tuple[Text, Text, Text]:
    """(prompt, chosen, rejected) of a preference pair whose prompt is implicit, the part both share.

    Conversations share their leading messages; strings share a prefix, cut back to its last whitespace, which
    starts the completions (TRL's convention: the space belongs to the reply's first word)."""
    if is_conversation(chosen) != is_conversation(rejected):
        raise UserError(f"{where}: 'chosen' and 'rejected' must both be strings or both be conversations")
    if is_conversation(chosen):
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0:
            raise UserError(f"{where}: 'chosen' and 'rejected' share no leading messages (the implicit prompt)")
        return chosen[:shared], chosen[shared:], rejected[shared:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    space = max(chosen.rfind(" ", 0, shared), chosen.rfind("\n", 0, shared))
    cut = space if space > 0 else shared
    if not chosen[:cut].strip():
        raise UserError(f"{where}: 'chosen' and 'rejected' share no prompt (no common beginning)")
    if cut >= len(chosen) or cut >= len(rejected):
        raise UserError(f"{where}: one of 'chosen' and 'rejected' is the beginning of the other; no reply is left")
    return chosen[:cut], chosen[cut:], rejected[cut:]
