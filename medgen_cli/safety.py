"""Guards that keep a user's files safe while an artefact is written (used by ``artefacts.ArtefactWriter``).

Paths: ``normal_path`` makes paths comparable (real paths with symlinks resolved, normalised URLs) and
``relation`` says whether an output is, lies inside or contains an input.

One writer per output: ``OutputLock`` is ``OUT.lock`` beside ``OUT``, a JSON {pid, host, started, command}
created atomically (a complete temporary file hard-linked into place, or O_CREAT|O_EXCL where there are no
hard links), so two processes never both believe they hold it and a crash never leaves an empty lock. The
writer takes it in ``open()`` and releases it in ``commit()``/``close()``; a finaliser releases it when the
writer is garbage-collected or the interpreter exits, and a lock left by a killed process is stale.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import logging
import os
import socket
import sys
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any, Sequence

from .errors import UsageError
from .io import fs

log = logging.getLogger(__name__)


class LockError(UsageError):
    """Another run is writing the output (exit 2: nothing was touched)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------- paths
_URL = fs.URL  # s3://, gs://, https://; not C:/
is_url = fs.is_url


def normal_path(path: Path | str) -> str:
    """A comparable form of a path: the real path (symlinks resolved), or a normalised URL (s3://b/k)."""
    text = str(path)
    if _URL.match(text):
        return fs.normal_url(text)
    return os.path.realpath(os.path.expanduser(text))


def relation(a: str, b: str) -> str | None:
    """How normalised path ``a`` stands to ``b``: "is", "is inside", "contains" or None."""
    sep = "/" if _URL.match(a) else os.sep
    if a == b:
        return "is"
    if a.startswith(b.rstrip(sep) + sep):
        return "is inside"
    if b.startswith(a.rstrip(sep) + sep):
        return "contains"
    return None


def raw_paths(raw: Sequence[str | Path]) -> list[str]:
    """Raw inputs as paths: a glob pattern stands for its matches (and a ``**`` pattern for its base directory)."""
    paths: list[str] = []
    for item in raw:
        text = os.path.expanduser(str(item))
        if _URL.match(text) or not glob.has_magic(text) or os.path.lexists(text):
            paths.append(text)
            continue
        paths += glob.glob(text, recursive=True)
        if "**" in text:
            parts = Path(text).parts
            fixed = parts[:next(i for i, p in enumerate(parts) if glob.has_magic(p))]
            paths.append(str(Path(*fixed)) if fixed else ".")
    return paths


# ------------------------------------------------------------------------------------------------- lock
_HOLDERS: dict[str, tuple[weakref.ref, int, str]] = {}  # lock file -> (writer, thread, token) in this process


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), so a recycled PID is not taken for the lock's owner."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _running(pid: Any, proc_start: str | None) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    now = _proc_start(pid)
    return proc_start is None or now is None or now == proc_start


def _read_lock(path: Path | str) -> dict[str, Any] | None:
    """The lock's record; None when there is no lock, {} when it cannot be read (a file or a URL)."""
    try:
        data = json.loads(fs.read_text(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _release(path: str, token: str, pid: int) -> None:
    """Delete the lock file if it still holds ``token`` (never from a forked child of the owner)."""
    if os.getpid() == pid and (_read_lock(path) or {}).get("token") == token:
        fs.remove(path)
    entry = _HOLDERS.get(path)
    if entry is not None and entry[2] == token:
        del _HOLDERS[path]


class OutputLock:
    """``OUT.lock`` beside ``OUT``: JSON {pid, host, started, command}, created atomically.

    A lock is stale, and taken over, when its process is gone (same host, PID not running or recycled)
    or, in this process, when no live writer in another thread holds it (a step that failed in this
    thread cannot be writing any more). A lock from another host is never judged: the user is told how
    to remove it. Shard ``I`` of ``N`` (``preprocess --shard``) locks ``OUT.lock.shard-I-of-N`` instead,
    so shards write one store together while two runs of one shard, or a shard and a whole run, do not.
    """

    def __init__(self, out: Path, shard: tuple[int, int] = (0, 1)):
        self.out = out
        index, count = shard
        self.path = Path(f"{out}.lock" if count == 1 else f"{out}.lock.shard-{index}-of-{count}")
        self.others = (lambda: [Path(f"{out}.lock")]) if count > 1 else (
            lambda: sorted(Path(out.parent).glob(f"{glob.escape(out.name)}.lock.shard-*-of-*")))
        self.token: str | None = None
        self._finalizer: weakref.finalize | None = None

    def acquire(self, owner: object) -> None:
        for other in self.others():
            held = _read_lock(other)
            if held is not None and self._stale(other, held) is None:
                raise LockError(self._busy(other, held))
        me = os.getpid()
        record = {"pid": me, "host": socket.gethostname(), "started": _now(), "command": " ".join(sys.argv)[:300],
                  "proc_start": _proc_start(me), "token": uuid.uuid4().hex}
        for _ in range(5):
            if self._create(record):
                self.token = record["token"]
                _HOLDERS[str(self.path)] = (weakref.ref(owner), threading.get_ident(), self.token)
                # released when the writer is closed, garbage-collected or the interpreter exits
                self._finalizer = weakref.finalize(owner, _release, str(self.path), self.token, me)
                return
            held = _read_lock(self.path)
            if held is None:
                continue  # released meanwhile
            reason = self._stale(self.path, held)
            if reason is None:
                raise LockError(self._busy(self.path, held))
            if reason:
                log.warning("taking over the stale lock %s: %s", self.path, reason)
            self._take_over(held)
        raise LockError(f"could not take the lock {self.path}: other processes keep taking it; run again.")

    def release(self) -> None:
        if self.token is not None:
            _release(str(self.path), self.token, os.getpid())
        if self._finalizer is not None:
            self._finalizer.detach()
        self.token = self._finalizer = None

    def held(self) -> bool:
        return self.token is not None and (_read_lock(self.path) or {}).get("token") == self.token

    def _stale(self, path: Path, held: dict[str, Any]) -> str | None:
        """Why the lock ``held`` is stale ("" = silently), or None while its writer may be running."""
        if not held or held.get("host") != socket.gethostname():
            return None
        if held.get("pid") == os.getpid() and held.get("proc_start") == _proc_start(os.getpid()):
            entry = _HOLDERS.get(str(path))
            alive = (entry is not None and entry[2] == held.get("token") and entry[0]() is not None
                     and entry[1] != threading.get_ident())
            return None if alive else ""
        if _running(held.get("pid"), held.get("proc_start")):
            return None
        return f"process {held.get('pid')} that took it at {held.get('started')} is no longer running"

    def _busy(self, path: Path, held: dict[str, Any]) -> str:
        if not held:
            return (f"{self.out} is locked by {path}, which names no owner; if no medgen run is writing {self.out}, "
                    f"delete {path} and run again.")
        text = (f"{self.out} is being written by another medgen run (process {held.get('pid')} on {held.get('host')}, "
                f"started {held.get('started')}: {held.get('command')}); wait for it to finish or choose another "
                "output directory")
        if held.get("host") != socket.gethostname():
            text += f" (if that run is gone, delete {path} on any machine and run again)"
        return text + "."

    def _create(self, record: dict[str, Any]) -> bool:
        """Create the lock file holding ``record``, atomically; False if it exists."""
        text = json.dumps(record) + "\n"
        tmp = self.path.with_name(f".{self.path.name}.{record['token']}")
        try:
            tmp.write_text(text)  # complete before it becomes the lock: a crash never leaves an empty lock
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            if not tmp.is_file():
                raise
            try:  # a file system without hard links
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, held: dict[str, Any]) -> None:
        """Remove the stale lock ``held`` unless another process replaced it since it was read."""
        grave = self.path.with_name(f".{self.path.name}.stale-{uuid.uuid4().hex}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        if _read_lock(grave) != held:  # a fresh lock, taken after ours was read: give it back
            try:
                os.link(grave, self.path)
            except OSError:
                pass
        grave.unlink(missing_ok=True)
