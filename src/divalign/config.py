"""Configs are dataclasses with a docstring under each field; this module turns them into command lines and
reads them from YAML.

Precedence: field defaults < the YAML file given with ``--config`` < command-line flags. Nested dataclasses
become dotted flags (``--fgrpo.divergence js``) and nested YAML mappings. Unknown keys, wrong types and
missing files are reported in one line naming the file and the key.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import os
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml

from divalign.errors import UserError


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def ordered_fields(cls) -> list[dataclasses.Field]:
    """The init fields of a dataclass in the order --help and config files show them: those the class itself
    declares (in its source order), then inherited ones (shared options such as the learning rate), then nested
    option groups."""
    own = list(inspect.get_annotations(cls if isinstance(cls, type) else type(cls)))
    fields = [f for f in dataclasses.fields(cls) if f.init]

    def key(f):
        nested = f.default_factory is not dataclasses.MISSING
        return (nested, f.name not in own, own.index(f.name) if f.name in own else 0)

    return sorted(fields, key=key)


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _scalar_type(tp):
    """The concrete scalar type of an annotation such as ``int``, ``float | None`` or ``str``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One flag per field; nested dataclasses get their own argument group with dotted names."""
    docs = field_docs(cls)
    hints = _hints(cls)
    group = (
        parser
        if not prefix
        else parser.add_argument_group(f"{prefix.rstrip('.')} options", (cls.__doc__ or "").strip().splitlines()[0])
    )
    nested = []
    for f in ordered_fields(cls):
        tp = hints[f.name]
        if _is_config(tp):
            nested.append((f.name, tp))
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "")
        scalar = _scalar_type(tp)
        if scalar is bool:
            group.add_argument(
                flag,
                dest=prefix + f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=f"{help_text} (default: {default})",
            )
        else:
            group.add_argument(
                flag,
                dest=prefix + f.name,
                type=_parser_for(scalar, flag),
                default=argparse.SUPPRESS,
                metavar=scalar.__name__.upper(),
                help=f"{help_text} (default: {default!r})",
            )
    for name, tp in nested:
        add_arguments(parser, tp, prefix + name + ".")


def _parser_for(scalar, flag):
    def parse(text: str):
        try:
            return scalar(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {scalar.__name__}, got '{text}'") from None

    parse.__name__ = scalar.__name__
    return parse


def build(cls, values: dict[str, Any], where: str = "config"):
    """Instantiate ``cls`` from a (possibly nested) mapping, checking keys and types."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of options, got {type(values).__name__}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise UserError(f"{where}: unknown option '{key}' (expected one of: {', '.join(sorted(names))})")
        tp = hints[key]
        if _is_config(tp):
            kwargs[key] = build(tp, value or {}, f"{where}.{key}")
        else:
            kwargs[key] = _coerce(value, tp, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except UserError as exc:
        message = str(exc)
        raise UserError(message if message.startswith(where) else f"{where}: {message}") from None


def _coerce(value, tp, where: str):
    scalar = _scalar_type(tp)
    if value is None and type(None) in typing.get_args(tp):
        return None
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if scalar is float and isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if scalar is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, scalar) or (scalar is int and isinstance(value, bool)):
        raise UserError(f"{where}: expected {scalar.__name__}, got {type(value).__name__} ({value!r})")
    return value


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of options at the top level")
    return data


def _set_dotted(target: dict, dotted: str, value, where: str) -> None:
    *parents, leaf = dotted.split(".")
    for depth, p in enumerate(parents):
        target = target.setdefault(p, {})
        if not isinstance(target, dict):
            name = ".".join(parents[: depth + 1])
            raise UserError(f"{where}.{name}: expected a mapping of options, got {type(target).__name__}")
    target[leaf] = value


def from_args(cls, args: argparse.Namespace, config_path: str | None = None):
    """Merge YAML (if any) and the flags the user actually gave, then build the config."""
    values = read_yaml(config_path) if config_path else {}
    where = str(config_path) if config_path else "config"
    for dotted, value in vars(args).items():
        if dotted in ("config", "command", "handler", "runs"):
            continue
        _set_dotted(values, dotted, value, where)
    return build(cls, values, where)


def to_dict(obj) -> dict:
    out = {}
    for f in ordered_fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def dump_yaml(obj) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
