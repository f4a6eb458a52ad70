"""Command-line flags from a frozen config dataclass: one flag per field, checked types, ``--config FILE``.

``ConfigParser(TrainConfig, prog, description, aliases).parse(argv)`` returns the config. Field ``lr_encoder``
is ``--lr-encoder``; a bool field is ``--x`` / ``--no-x``; an optional one also takes ``none``; a tuple takes
its values after the flag; ``bool | str`` (``compile``) is ``--x`` alone, ``--x VALUE`` or ``--no-x``. The class's
``CHOICES`` become the flag's choices. The help text of a field is its ``metadata["help"]``, else the comments
on its line and on the comment lines just above it; ``--help`` lists every field with its default.

Precedence: the dataclass defaults, then ``--config FILE`` (JSON, pscfast._config.load_json), then the
aliases (one flag setting several fields, e.g. ``--epochs``), then the fields' own flags. A bad value or
config file exits through ``parser.error``: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing

from pscfast._config import field_types, load_json, type_name, union_members


@functools.lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """{field: help text} from each field's ``metadata["help"]`` or the comments of its source lines."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    found = {}
    body = next(node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)).body
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line >= 1 and lines[line - 1].lstrip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        inline = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        found[node.target.id] = " ".join(above + inline)
    return {f.name: f.metadata.get("help", found.get(f.name, "")) for f in dataclasses.fields(cls)}


def _optional(convert, name: str):
    def parse(text: str):
        return None if text.lower() == "none" else convert(text)
    parse.__name__ = name  # argparse names the type in its error messages
    return parse


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


class ConfigParser:
    """An argparse parser for the fields of ``cls``; ``aliases`` = {flag name: (field, ...)}."""

    def __init__(self, cls, prog: str, description: str | None = None,
                 aliases: dict[str, tuple[str, ...]] | None = None):
        self.cls, self.aliases = cls, dict(aliases or {})
        self.parser = argparse.ArgumentParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                                              formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.add_argument("--config", metavar="FILE",
                                 help=f"JSON file of {cls.__name__} fields; the flags below override it")
        kinds, helps, choices = field_types(cls), field_help(cls), getattr(cls, "CHOICES", {})
        defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
                    for f in dataclasses.fields(cls)}
        for name, fields in self.aliases.items():
            unknown = [f for f in fields if f not in kinds]
            if unknown:
                raise TypeError(f"{cls.__name__}: the alias --{name} names unknown fields {unknown}")
            self._add(name, kinds[fields[0]], f"sets {' and '.join(fields)}", None, choices.get(fields[0]),
                      dest=f"alias:{name}")
        for name, kind in kinds.items():
            self._add(name, kind, helps[name], defaults[name], choices.get(name), dest=name)

    def _add(self, name: str, kind, text: str, default, choices, dest: str) -> None:
        flag = "--" + name.replace("_", "-")
        text = f"{text} (default: {_show(default)})" if not dest.startswith("alias:") else text
        members = [t for t in union_members(kind) if t is not type(None)]
        optional = len(members) < len(union_members(kind))
        options = dict(dest=dest, help=text.replace("%", "%%"))
        metavar = name.upper()
        if set(members) == {bool}:
            self.parser.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif set(members) == {bool, str}:  # --x alone means True, --x VALUE a name, --no-x False
            self.parser.add_argument(flag, nargs="?", const=True, metavar="VALUE", **options)
            self.parser.add_argument("--no-" + flag[2:], action="store_const", const=False, dest=dest,
                                     help=argparse.SUPPRESS)
        elif len(members) == 1 and typing.get_origin(members[0]) is tuple:
            args = typing.get_args(members[0])
            item = args[0]
            if not (len(args) == 2 and args[1] is Ellipsis) and any(a is not item for a in args):
                raise TypeError(f"{self.cls.__name__}.{name}: a tuple flag needs one item type, got {type_name(kind)}")
            nargs = "+" if args[-1] is Ellipsis else len(args)
            self.parser.add_argument(flag, nargs=nargs, type=item, metavar=metavar, **options)
        elif len(members) == 1 and members[0] in (int, float, str):
            convert = members[0]
            if optional:
                convert = _optional(convert, f"{convert.__name__} or none")
            self.parser.add_argument(flag, type=convert, choices=choices, metavar=None if choices else metavar,
                                     **options)
        else:
            raise TypeError(f"{self.cls.__name__}.{name}: no command-line flag for the type {type_name(kind)}")

    def parse(self, argv=None):
        """The config that the defaults, ``--config`` and the flags of ``argv`` make."""
        given = vars(self.parser.parse_args(argv))
        values = {}
        try:
            if "config" in given:
                values.update(load_json(self.cls, given.pop("config")))
        except (ValueError, OSError) as exc:
            self.parser.error(str(exc))
        for name, fields in self.aliases.items():
            if f"alias:{name}" in given:
                values.update(dict.fromkeys(fields, given.pop(f"alias:{name}")))
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})
        try:
            return self.cls(**values)
        except ValueError as exc:  # a value the config refuses: one line, not a traceback
            self.parser.error(str(exc))
