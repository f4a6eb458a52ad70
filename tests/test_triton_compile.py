"""Every Triton kernel compiles for an H100/H200 (sm_90) in Triton's real compiler, on this machine without a GPU.

The interpreter that runs the Triton tests on CPU accepts code the compiler rejects (it found three such bugs:
if/else branches binding one name to blocks of different shapes, a non-constexpr global, a float64 tl.dot
without out_dtype under Triton 3.6). tests/triton_aot.py compiles each op's forward and backward for every
dtype of the Triton backend in a fresh process (the interpreter must not be on there).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pscfast import kernels

AOT = Path(__file__).with_name("triton_aot.py")


def _launched_kernels() -> set:
    """The functions pscfast.kernels launches (`name[grid](...)` in its source), as module.name."""
    import ast
    import importlib
    import pkgutil

    names = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.name == "_interpreter":  # its probe kernel only ever runs in the interpreter
            continue
        module = importlib.import_module(f"pscfast.kernels.{info.name}")
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript) \
                    and isinstance(node.func.value, ast.Name):
                fn = getattr(module, node.func.value.id).fn
                names.add(f"{fn.__module__}.{fn.__name__}")
    return names


@pytest.mark.skipif(not kernels.AVAILABLE, reason=str(kernels.UNAVAILABLE_REASON))
def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    report_path = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, str(AOT), "--arch", "90", "--out", str(report_path)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if not report_path.exists():
        pytest.fail(f"tests/triton_aot.py did not finish:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(report_path.read_text())
    failures = "\n".join(f"--- {f['op']} {f['dtype']}\n{f['error'][-1500:]}" for f in report["failures"])
    assert not report["failures"], failures
    missing = _launched_kernels() - set(report["compiled"])
    assert not missing, f"kernels no case of tests/triton_aot.py compiled: {sorted(missing)}"
