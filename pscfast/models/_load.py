"""Files that a user named: torch.load of a checkpoint with errors that name the file, and atomic writes."""
from __future__ import annotations

import errno
import os
import pickle
import re
import secrets

import torch


def load_file(path: str | os.PathLike, who: str, map_location="cpu"):
    """The file's contents (tensors and plain containers only: weights_only=True)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who}: {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive; old files are a pickle
        raise ValueError(f"{who}: {path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        text = str(exc)
        detail = text.split("WeightsUnpickler error:", 1)[-1]  # weights_only refusals: the object refused
        lines = [line.strip() for line in detail.splitlines() if line.strip()]
        reason = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(exc).__name__)
        raise ValueError(f"{who}: {path} cannot be read as a checkpoint of tensors ({reason[:200]})") from exc


def check_writable(path: str | os.PathLike, who: str) -> None:
    """Raise before any work when ``path`` cannot become a file: it is a folder, or a parent is a file."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{who}: {path} is a folder; give a file name")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{who}: {path}: {parent} is a file, not a folder")


def atomic_write(path: str | os.PathLike, write, who: str) -> None:
    """Write a file through ``write(binary_file)`` so that ``path`` holds either its old or its new contents.

    The data goes to a temporary file of a name unique to this call in the same folder (so that
    ``os.replace`` is atomic and two writers never share it), which is renamed into place when complete and
    removed when anything fails. A failed write raises OSError naming ``path`` in one line (errno kept:
    ENOSPC reads "no space left on device")."""
    path = os.fspath(path)
    check_writable(path, who)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open, not tempfile.mkstemp: the file gets the umask's mode (mkstemp's 0600 would stay after the rename)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            write(f)  # a file object, not a path: the OSError of a failed write (errno included) reaches here
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(exc)
        if cause is None:
            raise
        reason = "no space left on device" if cause.errno == errno.ENOSPC else (cause.strerror or str(cause))
        error = OSError(f"{who}: cannot write {path}: {reason}; the file there before (if any) is unchanged")
        error.errno = cause.errno
        raise error from exc


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError in an exception's chain: torch.save's zip writer can raise a RuntimeError of its own while
    the file's OSError (ENOSPC, EFBIG) propagates, or the other way round."""
    while exc is not None and not isinstance(exc, OSError):
        exc = exc.__cause__ or exc.__context__
    return exc


def stale_temporaries(folder: str) -> list[str]:
    """atomic_write's temporary files in ``folder`` whose writing process has ended (killed mid-write: the
    previous file is intact, but nothing removed the partial one). POSIX only (signal 0 probes the pid)."""
    stale = []
    for name in os.listdir(folder):
        match = re.fullmatch(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp", name)
        if match and not _alive(int(match.group(1))):
            stale.append(os.path.join(folder, name))
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
