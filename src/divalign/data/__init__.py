"""Readers for record files, with errors that name the file and line."""

from divalign.data.records import read_records, require_fields

__all__ = ["read_records", "require_fields"]
