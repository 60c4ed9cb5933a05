"""Reading record files — JSONL (optionally gzipped), JSON arrays, CSV and Parquet — into dicts, with one-line
errors that name the file and the line (JSONL, JSON) or row (CSV, Parquet).

Text is UTF-8 (a byte-order mark is allowed); bytes that are not are reported with their line. A CSV row with more
or fewer fields than its header, or a quote left open, is an error rather than a silently shifted record.
"""

from __future__ import annotations

import csv
import gzip
import io
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
        if suffix == ".parquet":
            records = _read_parquet(path)
        else:
            text = _text(path, gzip.decompress if suffix == ".jsonl.gz" else None)
            reader = {".jsonl": _read_jsonl, ".jsonl.gz": _read_jsonl, ".json": _read_json_array, ".csv": _read_csv}
            records = reader[suffix](path, text)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"{path}: cannot be read as {suffix[1:]} ({exc})") from None
    if not records:
        raise UserError(f"{path}: no records")
    return records


def _text(path: Path, decompress) -> str:
    """The file's text: UTF-8, an optional byte-order mark dropped; bytes that are not UTF-8 are reported with their
    line and column."""
    data = path.read_bytes()
    if decompress is not None:
        data = decompress(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})") from None


def _json_error(path: Path, exc: json.JSONDecodeError, line: int | None = None) -> UserError:
    """An error naming where the JSON went wrong; a problem noticed past the end of a line, or at the start of the
    next one (a missing comma, bracket or brace), is reported at the end of the line where it is."""
    text_line = exc.doc.splitlines()[exc.lineno - 1] if exc.doc.splitlines() else ""
    line = (line or exc.lineno)
    if exc.colno == 1 and exc.lineno > 1:
        return UserError(f"{path}:{line - 1}: invalid JSON at the end of the line ({exc.msg})")
    if exc.colno > len(text_line.rstrip()):
        return UserError(f"{path}:{line}: invalid JSON at the end of the line ({exc.msg})")
    return UserError(f"{path}:{line}: invalid JSON ({exc.msg} at column {exc.colno})")


def _read_jsonl(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _json_error(path, exc, number) from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        records.append(Record(f"{path}:{number}", obj))
    return records


def _read_json_array(path: Path, text: str) -> list[Record]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _json_error(path, exc) from None
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON array of objects")
    records = []
    for index, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise UserError(f"{path}: row {index}: expected a JSON object, got {type(obj).__name__}")
        records.append(Record(f"{path}: row {index}", obj))
    return records


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header:
            return []
        records = []
        for index, row in enumerate(reader, start=1):
            if not row:
                continue
            if len(row) != len(header):
                raise UserError(f"{path}: row {index}: {len(row)} fields where the header has {len(header)} "
                                "(a stray comma, or a quote left open?)")
            records.append(Record(f"{path}: row {index}", dict(zip(header, row))))
    except csv.Error as exc:
        raise UserError(f"{path}:{reader.line_num}: cannot be read as CSV ({exc}; a quote left open?)") from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq
    from pyarrow.lib import ArrowException

    try:
        rows = pq.read_table(path).to_pylist()
    except ArrowException as exc:
        raise UserError(f"{path}: cannot be read as parquet ({exc})") from None
    return [Record(f"{path}: row {index}", row) for index, row in enumerate(rows, start=1)]


def require_fields(records: Iterable[Record], fields: dict[str, type | tuple]) -> None:
    """Check every record has each field with the expected type (a string field must not be blank); name the first
    offender and the field."""
    for record in records:
        for name, kinds in fields.items():
            if name not in record.data or record.data[name] is None:
                raise UserError(f"{record.where}: missing field '{name}' (expected fields: {', '.join(fields)})")
            value = record.data[name]
            if not isinstance(value, kinds):
                expected = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
                raise UserError(f"{record.where}: field '{name}' must be {expected}, got {type(value).__name__}")
            if isinstance(value, str) and not value.strip():
                raise UserError(f"{record.where}: field '{name}' is empty")
