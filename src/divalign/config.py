"""Configs are dataclasses with a docstring under each field; this module turns them into command lines and reads
them from YAML.

Precedence: field defaults < the YAML file given with ``--config`` < command-line flags. Nested dataclasses become
dotted flags (``--arithmetic.max-value 50``) and nested YAML mappings. A field marked :data:`OBJECTIVE_OPTIONS`
holds the options of the objective named by the config's ``objective`` field: every registered objective of the
config's ``families`` gets its group of flags (``--fgrpo.divergence js``), and only the chosen one's may be given.
Unknown keys, wrong types, invalid values and missing files are reported in one line naming the file and the key.

Parsing is written here rather than taken from a library: jsonargparse and tyro were tried on these configs;
neither keeps one-line errors that name the YAML file and key (both print multi-line reports), jsonargparse
spells flags with underscores and booleans as ``--flag true``, and neither builds the per-objective groups from
a registry, so adopting one would not delete the code below (docs/architecture.md#configuration).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import os
import textwrap
import typing
from pathlib import Path
from typing import Any

import yaml

from divalign import objectives
from divalign.errors import UserError

#: Metadata key of the field that holds the chosen objective's options (see the module docstring).
OBJECTIVE_OPTIONS = "divalign.objective_options"


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass (read from its source; a subclass that declares a
    field again without one keeps its base's)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in itertools.pairwise(body):
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
    """The init fields of a dataclass in the order ``--help`` and config files show them: the class's own first,
    then those of its bases in the order it lists them, nested option groups last."""
    cls = cls if isinstance(cls, type) else type(cls)
    declared = {}
    for rank, klass in enumerate(cls.__mro__):
        for position, name in enumerate(inspect.get_annotations(klass)):
            declared.setdefault(name, (rank, position))
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(OBJECTIVE_OPTIONS)]
    return sorted(fields, key=lambda f: (_is_config(hints[f.name]), declared[f.name]))


def _is_config(tp) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _scalar_type(tp):
    """The concrete scalar type of an annotation such as ``int``, ``float | None`` or ``str``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _objective_field(cls) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if f.metadata.get(OBJECTIVE_OPTIONS)), None)


def _objectives_of(cls) -> list[objectives.Objective]:
    return [objectives.get(name) for name in objectives.names(cls.families)] if _objective_field(cls) else []


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    """One flag per field; nested dataclasses and the objectives' options get argument groups with dotted names."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    doc = (cls.__doc__ or "").strip().splitlines()
    group = parser if not prefix else parser.add_argument_group(f"{prefix.rstrip('.')} options", doc[0] if doc else "")
    choosable = [o.name for o in _objectives_of(cls)]
    nested = []
    for f in ordered_fields(cls):
        tp = hints[f.name]
        if _is_config(tp):
            nested.append((f.name, tp))
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "")
        if f.name == "objective" and choosable:
            help_text += f" One of: {', '.join(choosable)}."
        scalar = _scalar_type(tp)
        if scalar is bool:
            group.add_argument(flag, dest=prefix + f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=f"{help_text} (default: {default})")
        else:
            group.add_argument(flag, dest=prefix + f.name, type=_parser_for(scalar), default=argparse.SUPPRESS,
                               metavar=scalar.__name__.upper(), help=f"{help_text} (default: {default!r})")
    for name, tp in nested:
        add_arguments(parser, tp, prefix + name + ".")
    for objective in _objectives_of(cls):
        add_arguments(parser, objective.options, prefix + objective.name + ".")


def _parser_for(scalar):
    def parse(text: str):
        try:
            return scalar(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {scalar.__name__}, got '{text}'") from None

    parse.__name__ = scalar.__name__
    return parse


def build(cls, values: dict[str, Any], where: str = "config"):
    """Instantiate ``cls`` from a (possibly nested) mapping, checking keys, types and values."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of options, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init and not f.metadata.get(OBJECTIVE_OPTIONS)}
    values = dict(values)
    kwargs = _objective_kwargs(cls, values, where)
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
    except (UserError, ValueError) as exc:
        message = str(exc)
        raise UserError(message if message.startswith(where) else f"{where}: {message}") from None


def _objective_kwargs(cls, values: dict, where: str) -> dict:
    """Take the objectives' option mappings out of ``values``; build the chosen objective's."""
    options_field = _objective_field(cls)
    if options_field is None:
        return {}
    given = {o.name: values.pop(o.name) for o in _objectives_of(cls) if o.name in values}
    name = values.get("objective", next(f.default for f in dataclasses.fields(cls) if f.name == "objective"))
    try:
        chosen = objectives.get(_coerce(name, str, f"{where}.objective"), cls.families)
    except ValueError as exc:
        raise UserError(f"{where}.objective: {exc}") from None
    for other in given:
        if other != chosen.name:
            raise UserError(f"{where}.{other}: options of objective '{other}' given, but the objective is "
                            f"'{chosen.name}'")
    return {options_field.name: build(chosen.options, given.get(chosen.name) or {}, f"{where}.{chosen.name}")}


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


def from_args(cls, args: argparse.Namespace, config_path: str | None = None, skip: tuple[str, ...] = ()):
    """Merge YAML (if any) and the flags the user actually gave (except the names in ``skip``), then build."""
    values = read_yaml(config_path) if config_path else {}
    where = str(config_path) if config_path else "config"
    for dotted, value in vars(args).items():
        if dotted not in skip:
            _set_dotted(values, dotted, value, where)
    return build(cls, values, where)


def to_dict(obj) -> dict:
    """The options of a config as a nested mapping that :func:`build` reads back (the chosen objective's options
    under its name)."""
    out = {}
    for f in ordered_fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    options_field = _objective_field(type(obj))
    if options_field is not None:
        out[obj.objective] = to_dict(getattr(obj, options_field.name))
    return out


def dump_yaml(obj) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)
