"""Error classes that carry their exit code: the CLI prints the message as one sentence.

``UsageError`` (exit 2): the command, a setting or an input artefact is wrong; nothing ran.
``StepFailed`` (exit 1): the step ran and failed (e.g. an input image could not be read, the disk
filled up). ``os_error_sentence`` and ``disk_full`` turn operating-system errors into sentences that
say what happened to which file, so no step ever reports "RuntimeError: . unexpected pos".
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# errors that mean "no room left to write": the disk, or the user's quota on it
NO_SPACE = {errno.ENOSPC, errno.EDQUOT} if hasattr(errno, "EDQUOT") else {errno.ENOSPC}
# how torch's zip writer and the safetensors writer report a write that ran out of space
_NO_SPACE_TEXT = ("no space left", "storagefull", "quota exceeded", "os error 28", "code: 28")
_SHORT_WRITE_TEXT = ("unexpected pos", "file write failed")  # a short write: full, or another IO error
LOW_SPACE_BYTES = 16 * 2**20  # less free space than this after a failed write: the disk was full


class MedgenError(Exception):
    exit_code = 1


class UsageError(MedgenError, ValueError):
    exit_code = 2


class StepFailed(MedgenError, ValueError):
    exit_code = 1


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def _existing_dir(path: Path | str) -> Path:
    """``path``'s directory, or its nearest parent that exists."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p if p.is_dir() else p.parent


def free_space(path: Path | str) -> int | None:
    """Free bytes on the file system holding ``path``; None if unknown."""
    try:
        return shutil.disk_usage(_existing_dir(path)).free
    except OSError:
        return None


def is_disk_full(err: BaseException, path: Path | str) -> bool:
    """Whether ``err``, raised while writing ``path``, means the disk (or quota) is full.

    torch and safetensors do not always keep the errno: a short write shows as a RuntimeError
    ("unexpected pos", "file write failed"); then the free space left decides.
    """
    if isinstance(err, OSError) and err.errno in NO_SPACE:
        return True
    text = str(err).lower()
    if any(s in text for s in _NO_SPACE_TEXT):
        return True
    if is_short_write(err):
        free = free_space(path)
        return free is None or free < LOW_SPACE_BYTES
    return False


def is_short_write(err: BaseException) -> bool:
    """Whether ``err`` is torch's or safetensors' report of a write that came up short."""
    return any(s in str(err).lower() for s in _SHORT_WRITE_TEXT)


def disk_full(path: Path | str, what: str = "write", hint: str = "free some space and run the same command again") -> StepFailed:
    """The StepFailed to raise when writing ``path`` ran out of space."""
    free = free_space(path)
    left = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return StepFailed(f"could not {what} {path}: the disk is full ({left} in {_existing_dir(path)}); {hint}")


def os_error_sentence(err: OSError) -> str:
    """One sentence for an operating-system error: what failed, on which file, and what to do."""
    name = err.filename or "a file"
    if err.errno in NO_SPACE:
        return str(disk_full(name, "write")).rstrip(".")
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied on {name}; check its owner and permissions, or choose another --out"
    if err.errno == errno.EROFS:
        return f"{name} is on a read-only file system; choose another --out"
    if err.errno == errno.ENOENT:
        return f"{name} does not exist; check the path"
    reason = err.strerror or type(err).__name__
    return f"{reason.rstrip('.')}: {name}"
