"""The whole tree is lint-clean: ruff for Python (configured in pyproject.toml) and clang-format for the C++ and
CUDA sources (configured in .clang-format). Both tools come with the test extras (`pip install -e .[test]`)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CXX_SUFFIXES = {".h", ".cpp", ".cu", ".cuh"}


def _tool(name: str) -> str:
    """The tool installed beside this interpreter (the test extras), else the one on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the test extras (pip install -e '.[test]')")
    return found


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_python_is_ruff_clean():
    r = _run([_tool("ruff"), "check", "--no-cache", "."])
    assert r.returncode == 0, f"ruff check . found problems (ruff check --fix . repairs some):\n{r.stdout}{r.stderr}"


def test_cxx_is_clang_format_clean():
    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in CXX_SUFFIXES)
    assert sources, "no C++/CUDA sources found under csrc/"
    r = _run([_tool("clang-format"), "--dry-run", "--Werror", *sources])
    assert r.returncode == 0, (f"clang-format would change these sources (clang-format -i FILES reformats them):\n"
                               f"{r.stderr[:20000]}")
