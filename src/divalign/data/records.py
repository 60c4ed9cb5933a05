"""Reading record files (JSONL, optionally gzipped) with one-line errors naming the file and line."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable

from divalign.errors import UserError


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_records(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """All records of a ``.jsonl`` / ``.jsonl.gz`` file as (line number, object); blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a JSONL file")
    records = []
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
                records.append((number, obj))
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot be read as UTF-8 JSONL ({exc})") from None
    if not records:
        raise UserError(f"{path}: no records (expected one JSON object per line)")
    return records


def require_fields(path: str | os.PathLike, records: Iterable[tuple[int, dict]], fields: dict[str, type | tuple]):
    """Check every record has each field with the expected type; name the first offender's line and field."""
    for number, obj in records:
        for name, kinds in fields.items():
            if name not in obj:
                raise UserError(f"{path}:{number}: missing field '{name}' (expected fields: {', '.join(fields)})")
            if not isinstance(obj[name], kinds):
                expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
                raise UserError(f"{path}:{number}: field '{name}' must be {expected}, got {type(obj[name]).__name__}")
