"""What the command lines share: errors turned into one-line messages.

Library code raises exceptions; a command line catches the expected ones and exits with one line on stderr
(``prog: message``): 2 for bad input (arguments, files, data, a missing weights package), 1 for a run that
failed (divergence, a full disk, an output folder in use). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import contextlib
import sys

from pscfast.models.efficientnet import MissingPackageError

INPUT_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                PermissionError, MissingPackageError)
RUN_ERRORS = (FloatingPointError, OSError)


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
