"""The package's dependencies run one way: data <- ops <- models <- evaluation <- training <- command lines.

Every module of pscfast is given a level; each import statement in it (module-level or inside a function,
absolute or relative) may name a module of its own level or a lower one. A module missing from LEVELS fails
the test: place it before it lands.
"""
import ast
import functools
import importlib.util
import os
import pkgutil
import subprocess
import sys

import pytest

import pscfast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lowest first; a module belongs to the entry naming it or its closest enclosing package
LEVELS = [
    # the standard library and torch only; pscfast._C is the compiled extension
    ("base", ("pscfast._C", "pscfast._config", "pscfast._device", "pscfast._extension")),
    ("data", ("pscfast.data",)),
    ("ops", ("pscfast", "pscfast.ops", "pscfast.kernels")),
    ("models", ("pscfast.models", "pscfast.losses")),
    ("evaluation", ("pscfast.evaluation", "pscfast.viz")),
    ("training", ("pscfast.training",)),
    ("command lines", ("pscfast._cli", "pscfast._eval_cli", "pscfast._flags", "pscfast.diagnose", "pscfast.evaluate",
                       "pscfast.info", "pscfast.predict", "pscfast.train")),
]
RANK = {name: rank for rank, (_, names) in enumerate(LEVELS) for name in names}


def level(module: str) -> int:
    """The rank in LEVELS of a pscfast module. The root package "pscfast" ranks by itself only: a new top-level
    module must be placed explicitly."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in RANK:
            return RANK[".".join(parts[:n])]
    if module == "pscfast":
        return RANK["pscfast"]
    raise AssertionError(f"{module} has no level in tests/test_layers.py LEVELS: add it where it belongs")


def modules() -> dict[str, str]:
    """Every module of the package and its source file."""
    found = {"pscfast": pscfast.__file__}
    for info in pkgutil.walk_packages(pscfast.__path__, "pscfast."):
        spec = importlib.util.find_spec(info.name)
        if spec.origin and spec.origin.endswith(".py"):
            found[info.name] = spec.origin
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def imported(module: str, path: str) -> list[tuple[int, str]]:
    """(line, pscfast module) for every import statement of the file, anywhere in it."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "pscfast"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "pscfast":
                continue
            for alias in node.names:  # `from pscfast import ops` imports the module pscfast.ops
                name = f"{base}.{alias.name}"
                out.append((node.lineno, name if _is_module(name) else base))
    return out


def test_every_import_points_to_the_same_level_or_below():
    wrong = []
    for module, path in sorted(modules().items()):
        mine = level(module)
        for line, target in imported(module, path):
            if level(target) > mine:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line}: {module} ({LEVELS[mine][0]}) imports {target} "
                             f"({LEVELS[level(target)][0]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_walk_sees_every_level():
    levels = {level(m) for m in modules()}
    assert levels == set(range(len(LEVELS))), levels


@functools.lru_cache(maxsize=None)
def _loaded_by(package: str) -> list[str]:
    """The pscfast modules that importing ``package`` loads, in a fresh interpreter."""
    code = f"import sys, {package}; print('\\n'.join(m for m in sys.modules if m.startswith('pscfast')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


@pytest.mark.parametrize("package", ["pscfast.evaluation", "pscfast.training"])
def test_importing_a_level_loads_nothing_above_it(package):
    """At run time too: e.g. importing pscfast.evaluation does not import pscfast.training. What the root
    package loads itself (the ops) comes with any import of a subpackage and is left out."""
    loaded = _loaded_by(package)
    above = [m for m in set(loaded) - set(_loaded_by("pscfast")) if level(m) > level(package)]
    assert package in loaded and not above, above
