"""Frozen config dataclasses (TrainConfig, SFNetConfig): the type of each field, checks of the values, JSON files.

A field's annotation is its contract: int, float (an int is accepted), bool, str, ``X | None``, unions of
these, and tuples (``tuple[int, ...]``, ``tuple[float, float]``). A class may name the allowed values of some
fields in a class attribute ``CHOICES = {"field": (value, ...)}``. The command-line flags of a config are
built from the same information (pscfast._flags).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing


@functools.lru_cache(maxsize=None)
def field_types(cls) -> dict[str, object]:
    """{field name: its resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def union_members(annotation) -> tuple:
    """The members of ``X | Y`` (or ``Optional[X]``), or ``(annotation,)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def type_name(annotation) -> str:
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        inner = f"{type_name(args[0])}, ..." if len(args) == 2 and args[1] is Ellipsis else \
            ", ".join(type_name(a) for a in args)
        return f"tuple[{inner}]"
    return " or ".join("None" if t is type(None) else t.__name__ for t in union_members(annotation))


def matches(value, annotation) -> bool:
    """Whether ``value`` is of type ``annotation`` (a bool is no int or float; an int is a float)."""
    for t in union_members(annotation):
        if typing.get_origin(t) is tuple:
            args = typing.get_args(t)
            if not isinstance(value, tuple):
                continue
            if len(args) == 2 and args[1] is Ellipsis:
                if all(matches(v, args[0]) for v in value):
                    return True
            elif len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args)):
                return True
        elif t is type(None):
            if value is None:
                return True
        elif isinstance(value, bool):
            if t is bool:
                return True
        elif t is float:
            if isinstance(value, (int, float)):
                return True
        elif isinstance(t, type) and isinstance(value, t):
            return True
    return False


def check_types(cfg) -> None:
    """Refuse a field whose value is not of its annotated type (``"8"`` for an int from a JSON config, a bool
    for a number) or not among the class's CHOICES for it."""
    who = type(cfg).__name__
    for name, annotation in field_types(type(cfg)).items():
        value = getattr(cfg, name)
        if not matches(value, annotation):
            raise ValueError(f"{who}: {name} must be {type_name(annotation)}, got {value!r} ({type(value).__name__})")
    for name, allowed in getattr(type(cfg), "CHOICES", {}).items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{who}: {name} must be one of {', '.join(map(str, allowed))}, got "
                             f"{getattr(cfg, name)!r}")


def load_json(cls, path: str) -> dict:
    """The fields a JSON config file sets (an object of field names; lists become the tuples of tuple
    fields). The values are checked when the config is built."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of {cls.__name__} fields, got {type(data).__name__}")
    kinds = field_types(cls)
    unknown = set(data) - set(kinds)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
    tuples = {name for name, t in kinds.items() if any(typing.get_origin(m) is tuple for m in union_members(t))}
    return {k: tuple(v) if k in tuples and isinstance(v, list) else v for k, v in data.items()}
