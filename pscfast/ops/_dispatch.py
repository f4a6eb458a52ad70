"""Backend selection for pscfast ops.

Every op has up to three implementations:
  cpp     the compiled kernels of pscfast._C (CPU C++ and, when built, CUDA C++),
  triton  the Triton kernels of pscfast.kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1),
  torch   the plain PyTorch reference of pscfast.ops._reference (always available, any device).

Choice, first match wins: the `backend=` argument of the call, else the environment variable
PSCFAST_BACKEND (a backend name or a comma-separated list in order of preference), else the default order
for the tensor's device (CUDA: cpp, triton, torch; CPU: cpp, torch; other devices: torch). A backend named
explicitly that cannot serve the call raises BackendUnavailable with each candidate's reason in words. When a
compiled backend ahead of torch in the order refuses (e.g. a dtype it has no kernel for), the reference runs and
a warning, once per op, device and dtype, gives the reasons.
Under torch.compile the choice is made while tracing and is part of the graph: a later change of
PSCFAST_BACKEND takes effect after torch._dynamo.reset() (a new `backend=` value or dtype recompiles).
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from pscfast import _extension

BACKENDS = ("cpp", "triton", "torch")
DEFAULT_ORDER = {"cuda": ("cpp", "triton", "torch"), "cpu": ("cpp", "torch")}
_CPP_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# the dtypes of an op whose CPU kernels also take half precision (accumulating in float32)
ALL_FLOAT_DTYPES = {"cpu": _CPP_DTYPES["cuda"], "cuda": _CPP_DTYPES["cuda"]}


# For the plain-call fast paths of the op wrappers: module globals, read faster than torch's attribute chains.
TENSOR = torch.Tensor
is_compiling = torch.compiler.is_compiling


def compiled_callable(name: str):
    """pscfast::<name> as the dispatcher's own callable, for the plain-call fast paths of the op wrappers (which
    check torch.compile first): the OpOverload's Python __call__ around it costs half a microsecond per call."""
    overload = getattr(torch.ops.pscfast, name).default
    return getattr(overload, "_op", overload)


class BackendUnavailable(RuntimeError):
    """No requested backend can run this call; the message lists each one's reason."""


@dataclass(eq=False)  # hashed by identity: the backend choice is cached per op
class Op:
    """One op's implementations and what each supports."""

    name: str
    impls: dict[str, Callable]
    cpp_dtypes: dict[str, tuple] = field(default_factory=lambda: dict(_CPP_DTYPES))
    triton_dtypes: tuple = _TRITON_DTYPES
    _chosen: dict = field(default_factory=dict, repr=False)  # select()'s eager cache

    def reason(self, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when `backend` can run this op on (device, dtype), else why not."""
        if backend not in self.impls:
            return f"{self.name} has no {backend} implementation"
        if backend == "torch":
            return None
        if backend == "cpp":
            return _cpp_reason(self, device.type, dtype)
        return _triton_reason(self, device.type, dtype)

    def select(self, backend: str | None, tensor: torch.Tensor) -> tuple[str, Callable]:
        if torch.compiler.is_compiling():
            name = _choose_constant(self.name, backend, _backend_env(), tensor.device.type, tensor.dtype)
            return name, self.impls[name]
        return self.select_eager(backend, tensor)

    def select_eager(self, backend: str | None, tensor: torch.Tensor) -> tuple[str, Callable]:
        """select() outside torch.compile: one dict lookup on what the tensor gives without building objects (a
        small op's whole budget is a few microseconds)."""
        env = _backend_env()
        key = (backend, env, tensor.is_cuda, tensor.is_cpu, tensor.dtype)
        chosen = self._chosen.get(key)
        if chosen is None:
            name = _choose(self, backend, env, tensor.device.type, tensor.dtype)
            chosen = self._chosen[key] = (name, self.impls[name])
        return chosen


# os.environ keeps its variables in a dict of encoded keys and values: reading that dict costs a tenth of
# os.environ.get (0.07 against 0.7 us), and it is what os.environ itself reads, so changes made at run time show.
_ENV_STORE = getattr(os.environ, "_data", None)
_ENV_KEY = os.environ.encodekey("PSCFAST_BACKEND") if isinstance(_ENV_STORE, dict) else None


def _backend_env() -> str:
    """The PSCFAST_BACKEND variable, read at every call ("" when unset)."""
    if _ENV_KEY is None:
        return os.environ.get("PSCFAST_BACKEND", "")
    value = _ENV_STORE.get(_ENV_KEY)
    return "" if value is None else os.environ.decodevalue(value)


def _cpp_reason(op: Op, device_type: str, dtype: torch.dtype) -> str | None:
    if not _extension.loaded():
        return _extension.load_error()
    if device_type not in op.cpp_dtypes:
        return f"no compiled kernel for {device_type} tensors"
    if not _extension.has_kernel(op.name, device_type):
        if device_type == "cuda":
            return _extension.cuda_unavailable_reason()
        return f"pscfast._C has no {device_type} kernel for {op.name}"
    if dtype not in op.cpp_dtypes[device_type]:
        return f"the {device_type} kernel takes {_names(op.cpp_dtypes[device_type])}, not {_names([dtype])}"
    return None


def _triton_reason(op: Op, device_type: str, dtype: torch.dtype) -> str | None:
    from pscfast import kernels

    if not kernels.AVAILABLE:
        return kernels.UNAVAILABLE_REASON
    if device_type == "cpu" and not kernels.INTERPRET:
        return "Triton kernels run on CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 set before import)"
    if device_type == "cpu":
        from pscfast.kernels import _interpreter

        why = _interpreter.problem()
        if why:
            return why
    if device_type not in ("cpu", "cuda"):
        return f"no Triton kernels for {device_type} tensors"
    if dtype not in op.triton_dtypes:
        return f"the Triton kernel takes {_names(op.triton_dtypes)}, not {_names([dtype])}"
    return None


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def parse_backends(spec: str, source: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"{source}: unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    return names


@torch.compiler.assume_constant_result
def _choose_constant(op: str, backend: str | None, env: str, device_type: str, dtype: torch.dtype) -> str:
    # torch.compile runs this once while tracing and bakes the name into the graph (the backend probes call
    # into torch._C, which Dynamo cannot trace); eager calls hit the cache
    return _choose(OPS[op], backend, env, device_type, dtype)


@functools.lru_cache(maxsize=1024)
def _choose(op: Op, backend: str | None, env: str, device_type: str, dtype: torch.dtype) -> str:
    if backend is not None:
        order, source = parse_backends(backend, "backend="), f"backend={backend!r}"
    elif env.strip():
        order, source = parse_backends(env, "PSCFAST_BACKEND"), f"PSCFAST_BACKEND={env!r}"
    else:
        order, source = DEFAULT_ORDER.get(device_type, ("torch",)), None
    reasons = []
    for name in order:
        why = op.reason(name, torch.device(device_type), dtype)
        if why is None:
            if name == "torch" and reasons:
                _warn_fallback(op.name, device_type, dtype, reasons)
            return name
        reasons.append(f"  {name}: {why}")
    raise BackendUnavailable(
        f"pscfast.ops.{op.name}: no backend of {source or 'the default order'} can run on "
        f"{device_type} {_names([dtype])} tensors:\n" + "\n".join(reasons)
    )


_WARNED: set = set()


def _warn_fallback(op: str, device_type: str, dtype: torch.dtype, reasons: list[str]) -> None:
    """Once per (op, device, dtype): a compiled backend was wanted but refused, and the reference (often 10-100x
    slower) runs instead."""
    key = (op, device_type, dtype)
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(f"pscfast.ops.{op}: running the plain PyTorch reference on {device_type} {_names([dtype])} "
                  f"tensors (slow), because\n" + "\n".join(reasons), stacklevel=4)


OPS: dict[str, Op] = {}


def register_op(op: Op) -> Op:
    """Adds an op to the table that `python -m pscfast.info` and the tests enumerate."""
    OPS[op.name] = op
    return op

