"""Reading record files — JSONL (optionally gzipped), JSON arrays, CSV and Parquet — into dicts, with one-line
errors that name the file and the line (JSONL) or row (CSV, Parquet)."""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from divalign.errors import UserError
from divalign.paths import resolve

FORMATS = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Record:
    where: str  #: "file:line" (JSONL) or "file: row N" (JSON, CSV, Parquet), for messages
    data: dict[str, Any]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in FORMATS:
        if name.endswith(suffix):
            return suffix
    raise UserError(f"{path}: unsupported file type (expected one of: {', '.join(FORMATS)})")


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of a data file, in order; blank JSONL lines are skipped. Raises UserError on any problem.
    A path starting with ``data:`` is read from the shared data folder (:func:`divalign.paths.resolve`)."""
    path = Path(resolve(str(path)))
    if not path.exists():
        raise UserError(f"{path}: file does not exist")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected a data file ({', '.join(FORMATS)})")
    suffix = _suffix(path)
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            records = _read_jsonl(path, gzip.open if suffix == ".jsonl.gz" else open)
        elif suffix == ".json":
            records = _read_json_array(path)
        elif suffix == ".csv":
            records = _read_csv(path)
        else:
            records = _read_parquet(path)
    except (UnicodeDecodeError, OSError, EOFError, csv.Error) as exc:
        raise UserError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from None
    if not records:
        raise UserError(f"{path}: no records")
    return records


def _read_jsonl(path: Path, opener) -> list[Record]:
    records = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            records.append(Record(f"{path}:{number}", obj))
    return records


def _read_json_array(path: Path) -> list[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects")
    records = []
    for index, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise UserError(f"{path}: row {index}: expected a JSON object, got {type(obj).__name__}")
        records.append(Record(f"{path}: row {index}", obj))
    return records


def _read_csv(path: Path) -> list[Record]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            return []
        return [Record(f"{path}: row {index}", dict(row)) for index, row in enumerate(reader, start=1)]


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq
    from pyarrow.lib import ArrowException

    try:
        rows = pq.read_table(path).to_pylist()
    except ArrowException as exc:
        raise UserError(f"{path}: cannot be read as parquet ({exc})") from None
    return [Record(f"{path}: row {index}", row) for index, row in enumerate(rows, start=1)]


def require_fields(records: Iterable[Record], fields: dict[str, type | tuple]) -> None:
    """Check every record has each field with the expected type; name the first offender and the field."""
    for record in records:
        for name, kinds in fields.items():
            if name not in record.data or record.data[name] is None:
                raise UserError(f"{record.where}: missing field '{name}' (expected fields: {', '.join(fields)})")
            if not isinstance(record.data[name], kinds):
                expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
                raise UserError(
                    f"{record.where}: field '{name}' must be {expected}, got {type(record.data[name]).__name__}"
                )
