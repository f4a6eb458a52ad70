"""What the command lines share: device checks and errors turned into one-line messages.

Library code raises exceptions; a command line catches the expected ones and exits with one line on stderr
(``prog: message``): 2 for bad input (arguments, files, data), 1 for a run that failed (divergence, a full
disk, an output folder in use). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys

import torch

INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError)
RUN_ERRORS = (FloatingPointError, OSError)


def check_device(name: str, who: str) -> torch.device:
    """torch.device(name), refused with a one-line message when it is malformed or absent on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"{who}: {name!r} is not a device (cpu, cuda, cuda:N, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{who}: {name!r} requested but no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{who}: {name!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return device


def message(exc: BaseException) -> str:
    """The exception's text on one line (a KeyError's str() is the repr of its message)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


@contextlib.contextmanager
def one_line_errors(prog: str):
    """``with one_line_errors("train/run.py"):`` exits 2 / 1 with ``prog: message`` on the expected errors."""
    try:
        yield
    except INPUT_ERRORS as exc:
        print(f"{prog}: {message(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    except RUN_ERRORS as exc:
        print(f"{prog}: {message(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
