"""One training run per output folder: ``<out>/train.lock``, locked (fcntl.flock) for the whole run.

The lock belongs to the open file, so the kernel releases it when the process ends in any way (kill -9
included): a stale lock file never blocks a later run. The file holds the owner's pid for the message.
Taking the lock removes the partial checkpoints of runs killed while writing one (their previous files are
intact). Where fcntl is missing (Windows) nothing is locked.
"""
from __future__ import annotations

import contextlib
import os

from pscfast.models._load import stale_temporaries

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

LOCK_NAME = "train.lock"


class FolderInUseError(OSError):
    """Another live process holds the output folder's lock."""


class OutputLock:
    """``with OutputLock(out, who):`` creates ``out`` and holds its lock, or raises FolderInUseError."""

    def __init__(self, out: str, who: str):
        self.path, self.who, self.file = os.path.join(out, LOCK_NAME), who, None

    def __enter__(self) -> "OutputLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if fcntl is None:
            return self
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "unknown"
            f.close()
            raise FolderInUseError(f"{self.who}: output folder {os.path.dirname(self.path)} is in use by another "
                                   f"run (pid {owner}); choose another --out or wait for that run to end") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        for path in stale_temporaries(os.path.dirname(self.path)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()  # closing the last descriptor releases the lock
            self.file = None
