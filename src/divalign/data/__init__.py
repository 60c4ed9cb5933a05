"""Readers for record files and datasets, with errors that name the file and line."""

from divalign.data.records import Record, read_records, require_fields

__all__ = ["Record", "read_records", "require_fields"]
