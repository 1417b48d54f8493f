"""Resumable training checkpoints: atomic writes, keep-last-N plus best, safe loading only.

A checkpoint is a ``torch.save`` zip archive holding only tensors and plain values: module and
optimizer state dicts, LR schedulers, the gradient scaler, the weight EMA, the RNG states of
torch, numpy, Python and CUDA (as tensors and lists, never pickled objects), the data position
(epoch, batch) and the trainer's counters. It is written to a temporary file and renamed, so a
crash never leaves a half-written checkpoint under a real name, and it is read with
``torch.load(weights_only=True)``: a file holding pickled objects, or a damaged one, is refused.

A save that fails (a full disk shows as torch's "unexpected pos") removes its temporary file and
raises ``StepFailed`` naming the file and the free space; temporaries of earlier killed runs are
removed by the next save. ``write_atomic`` does the same for any writer (e.g. ``model.safetensors``).
"""

from __future__ import annotations

import logging
import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import StepFailed, UsageError, disk_full, is_disk_full, is_short_write

log = logging.getLogger(__name__)

FORMAT = "medgen-checkpoint"
VERSION = 1
_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")
BEST = "best.pt"


class CheckpointError(UsageError):
    """A checkpoint cannot be read safely (damaged, pickled objects, or not a medgen checkpoint)."""


# ---------------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """RNG states of torch, numpy, Python and CUDA as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by `rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][: torch.cuda.device_count()])


# --------------------------------------------------------------------------------------- file level
def write_atomic(path: Path | str, write: Callable[[Path], Any], what: str = "write") -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    On any failure the temporary file is removed; a full disk (or quota) becomes ``StepFailed``
    naming ``path`` and the free space left, another OS error a ``StepFailed`` naming the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        full = isinstance(err, Exception) and is_disk_full(err, path.parent)  # measured before the cleanup
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full(path, what, "free some space and run the same command again "
                            "(training: with --resume)") from None
        if isinstance(err, (OSError, RuntimeError)):
            log.debug("writing %s failed: %r", path, err)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            if is_short_write(err):  # torch's "unexpected pos": say what it means
                reason = "the file system took only part of it: a quota, a file-size limit or an I/O error"
            raise StepFailed(f"could not {what} {path} ({reason})") from None
        raise
    return path


def remove_stale_temporaries(directory: Path | str) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files that no running process of this machine is writing."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        m = _TEMP_FILE.match(p.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.debug("removed temporary files of interrupted saves: %s", [p.name for p in removed])
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain values) to ``path`` atomically (see ``write_atomic``)."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(path, lambda tmp: torch.save(payload, tmp), "save checkpoint")


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, refusing anything that is not one.

    Raises:
        CheckpointError: the file is missing, not a torch zip archive (e.g. a raw pickle), damaged,
            holds objects other than tensors and plain values, or is not a medgen checkpoint.
    """
    path = Path(path)
    advice = "delete it to resume from an earlier checkpoint, or re-run with --overwrite to start again"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is not a torch zip archive (damaged, or a pickle file); {advice}.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for bad archives
        log.debug("loading %s failed: %s", path, err)
        raise CheckpointError(
            f"checkpoint {path} is damaged or holds pickled objects that medgen never loads; {advice}."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a medgen training checkpoint; {advice}.")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"checkpoint {path} has version {state['version']}, newer than this medgen reads; upgrade medgen.")
    return state


# ----------------------------------------------------------------------------------------- manager
class CheckpointManager:
    """Numbered checkpoints ``step-<8-digit step>.pt`` in ``directory`` plus ``best.pt``.

    Args:
        directory: where checkpoints live (inside the step's ``OUT.partial/``).
        keep_last: how many numbered checkpoints to keep; older ones are deleted after a save.
        enabled: False on non-main ranks: saving is a no-op there, loading still works.
    """

    def __init__(self, directory: Path | str, keep_last: int = 2, enabled: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.enabled = enabled

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / BEST

    def steps(self) -> list[int]:
        """Steps of the numbered checkpoints on disk, ascending."""
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _STEP_FILE.match(p.name)))

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.path_for(steps[-1]) if steps else None

    def save(self, step: int, state: dict[str, Any]) -> Path | None:
        """Save the checkpoint of ``step`` and prune old ones."""
        if not self.enabled:
            return None
        remove_stale_temporaries(self.directory)
        path = save_checkpoint(self.path_for(step), state)
        for old in self.steps()[: -self.keep_last]:
            self.path_for(old).unlink(missing_ok=True)
        log.debug("saved checkpoint %s", path)
        return path

    def save_best(self, state: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        return save_checkpoint(self.best_path, state)
