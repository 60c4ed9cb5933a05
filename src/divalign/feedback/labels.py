"""The preference file labels go to: one JSON line per choice, appended and flushed to disk the moment it is made,
so a server killed mid-session loses nothing that was answered.

A line is a TRL preference record — ``prompt``, ``chosen``, ``rejected`` — with what the choice was made from:
``pair_id``, ``choice`` (``a``, ``b``, ``tie`` or ``both_bad``, always about the pair's own A and B), ``left``
(which of A and B the rater saw first, the recorded shuffle; none for a judge, which sees both orders),
``annotator``, ``time`` (UTC, ISO 8601), ``comment``, ``source`` (``human`` or ``judge``), the two responses and
the models that wrote them; a judge's line adds its verdict in each order (``judge_verdicts``) and its probability
that A is better (``judge_probability``). Only a choice for A or B has ``chosen`` and ``rejected``: a tie or "both bad" states
no preference, so the training commands leave such lines out (:func:`divalign.data.preferences.read_pairs`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from divalign.data.preferences import NO_PREFERENCE
from divalign.errors import UserError
from divalign.feedback.pairs import LabelPair
from divalign.tracking import warn

DECISIVE = ("a", "b")
CHOICES = (*DECISIVE, *NO_PREFERENCE)
SOURCES = ("human", "judge")


@dataclass(frozen=True)
class Label:
    pair_id: str
    annotator: str
    choice: str  #: one of CHOICES
    left: str | None  #: "a" or "b": the side shown first (None: both orders, a judge)
    source: str = "human"
    model_a: str = ""
    model_b: str = ""
    #: a judge's verdict ("a" or "b") with A shown first and with B shown first
    orders: tuple[str, str] | None = None


def shows_b_first(seed: int, pair_id: str, annotator: str) -> bool:
    """Whether the page shows B on the left: a coin flip per (seed, pair, annotator), the same on every restart."""
    digest = hashlib.sha256(f"{seed}\x00{pair_id}\x00{annotator}".encode()).digest()
    return bool(digest[0] & 1)


def _as_turn(prompt, response: str):
    """A response as TRL's conversational format wants it when the prompt is a conversation."""
    return [{"role": "assistant", "content": response}] if isinstance(prompt, list) else response


def label_record(pair: LabelPair, choice: str, annotator: str, left: str | None, comment: str = "",
                 source: str = "human", extra: dict | None = None) -> dict:
    """The line written for one choice (see the module docstring)."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
    record = {"prompt": pair.prompt}
    if choice in DECISIVE:
        chosen, rejected = (pair.response_a, pair.response_b) if choice == "a" else (pair.response_b, pair.response_a)
        record |= {"chosen": _as_turn(pair.prompt, chosen), "rejected": _as_turn(pair.prompt, rejected)}
    return record | {
        "pair_id": pair.id, "choice": choice, "left": left, "annotator": annotator,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "comment": comment, "source": source,
        "response_a": pair.response_a, "response_b": pair.response_b, "model_a": pair.model_a,
        "model_b": pair.model_b, **(extra or {}),
    }


def _label(data: dict, where: str) -> Label:
    for name in ("pair_id", "annotator", "choice"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise UserError(f"{where}: field '{name}' must be a non-empty string (a line divalign label writes)")
    if data["choice"] not in CHOICES:
        raise UserError(f"{where}: field 'choice' must be one of {', '.join(CHOICES)} (got {data['choice']!r})")
    left = data.get("left")
    if left not in ("a", "b", None):
        raise UserError(f"{where}: field 'left' must be \"a\", \"b\" or null (got {left!r})")
    source = data.get("source", "human")
    if source not in SOURCES:
        raise UserError(f"{where}: field 'source' must be one of {', '.join(SOURCES)} (got {source!r})")
    orders = data.get("judge_verdicts")
    if orders is not None:
        if not (isinstance(orders, dict) and all(orders.get(k) in DECISIVE for k in ("a_first", "b_first"))):
            raise UserError(f"{where}: field 'judge_verdicts' must be {{\"a_first\": \"a\"|\"b\", \"b_first\": "
                            "\"a\"|\"b\"}")
        orders = (orders["a_first"], orders["b_first"])
    return Label(data["pair_id"], data["annotator"], data["choice"], left, source, data.get("model_a") or "",
                 data.get("model_b") or "", orders)


class LabelFile:
    """The labels already in ``path`` and the appending of new ones (safe from several threads, and from several
    processes through an advisory lock on the file)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.labels: list[Label] = []
        self._lock = threading.Lock()
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; expected the preference file to write labels to")
        if self.path.exists():
            self._read()
        elif not os.access(self._existing_parent(), os.W_OK | os.X_OK):
            raise UserError(f"{self.path}: cannot be written (its folder is not writable)")

    def _existing_parent(self) -> Path:
        parent = self.path.parent
        while not parent.exists():
            parent = parent.parent
        return parent

    def _read(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            # only a process killed in the middle of a write leaves this: the unfinished line is no label
            cut = raw.rfind(b"\n") + 1
            warn(f"{self.path}: its last line is unfinished (a write was cut short) and is left out")
            raw = raw[:cut]
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{self.path}: not UTF-8 text ({exc})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(data, dict):
                raise UserError(f"{where}: expected a JSON object")
            self.labels.append(_label(data, where))

    def done(self, annotator: str) -> set[str]:
        """Ids of the pairs ``annotator`` has labelled."""
        return {label.pair_id for label in self.labels if label.annotator == annotator}

    def append(self, record: dict) -> Label:
        """Write one label and make it durable before returning (a crash after this loses nothing)."""
        label = _label(record, str(self.path))
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.labels.append(label)
        return label
