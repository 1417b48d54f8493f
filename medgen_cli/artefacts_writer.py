"""Writing an artefact atomically (DESIGN.md, "The artefact contract"): `ArtefactWriter` and its guards.

The step works in ``OUT.partial/`` and renames it to ``OUT`` only when done, so a crash never leaves a
directory that looks complete; an interrupted ``OUT.partial/`` is resumed when the settings and the
inputs match. Nothing a user has is ever lost: medgen deletes or reuses only what it made (a partial
carries the ``.medgen-partial`` mark, an artefact a medgen manifest listing its files), an output may
not be, lie inside or contain an input, and one process at a time writes an output (``OUT.lock``).
At an fsspec URL the writer is `medgen_cli.artefacts_url.UrlArtefactWriter`. Import it from
`medgen_cli.artefacts`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .artefacts_manifest import (MANIFEST, MARKER, OS_LITTER, SETTINGS_FILE, ArtefactError, InputRef, Kind, Manifest,
                                 _now, read_manifest)
from .errors import StepFailed
from .safety import LockError, OutputLock, is_url, normal_path as _normal, raw_paths as _raw_paths, relation as _relation

log = logging.getLogger(__name__)


def _upstream(refs: Sequence[InputRef]) -> list[tuple[str, str]]:
    """(path, the direct input it was reached through) of every input artefact and, best effort, its own inputs."""
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    frontier = [(ref.path, ref.path) for ref in refs]
    while frontier:
        path, via = frontier.pop(0)
        if _normal(path) in seen:
            continue
        seen.add(_normal(path))
        found.append((path, via))
        try:
            frontier += [(ref.path, via) for ref in read_manifest(path).inputs]
        except (ArtefactError, OSError):
            pass  # a moved or damaged upstream artefact: nothing more to protect through it
    return found


# ------------------------------------------------------------------------------------------ writing
def _atomic_write_text(file: Path, text: str) -> None:
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    _atomic_write_text(directory / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


def check_replaceable(out: Path | str, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace ``out`` (holding ``names``) unless it is a medgen artefact holding nothing but the files
    its manifest lists, and ``overwrite`` was given."""
    try:
        manifest = read_manifest(out) if MANIFEST in names else None
    except ArtefactError:
        manifest = None  # a manifest.json of some other tool
    if manifest is None:
        raise ArtefactError(f"{out} exists and is not a medgen artefact; choose another output directory.")
    if not overwrite:
        raise ArtefactError(f"{out} already exists; pass --overwrite to replace it or choose another output directory.")
    foreign = sorted(set(names) - set(manifest.files) - {MANIFEST, MARKER} - OS_LITTER)
    if foreign:
        raise ArtefactError(f"{out} holds files medgen did not write ({', '.join(foreign[:5])}), which --overwrite "
                            "never deletes; move them out of it or choose another output directory.")


class ArtefactWriter:
    """Create an artefact atomically, never touching what medgen did not make.

    ``open()`` refuses an output that is, lies inside or contains an input, takes ``OUT.lock`` (one writer
    per output), prepares ``OUT.partial/`` (fresh with the ``.medgen-partial`` mark, or resumed when it
    holds the same settings and inputs) and writes a ``running`` manifest; ``commit()`` marks it complete,
    renames it to ``OUT`` and releases the lock; ``close()`` (or leaving a ``with`` block) releases the
    lock and keeps ``OUT.partial/`` for a later resume.

    Args:
        out: final directory.
        kind: artefact kind.
        settings: resolved settings (JSON-able dict), recorded in the manifest and settings.yaml.
        inputs: references to the artefacts read.
        overwrite: replace an existing ``OUT`` (only a medgen artefact holding nothing but its own files,
            or an empty directory) and discard a medgen ``OUT.partial`` with other settings or inputs.
        resume: continue an interrupted ``OUT.partial`` with the same settings and unchanged inputs.
        raw_inputs: raw files, directories or glob patterns read (preprocess); like ``inputs``, the
            output may not be, lie inside or contain one.
        shard: (index, count) of a ``preprocess --shard`` run: shards share ``OUT.partial``, each with
            its own lock.
    """

    def __new__(cls, out: Path | str, *args: Any, **kwargs: Any) -> "ArtefactWriter":
        if cls is ArtefactWriter and is_url(str(out)):  # s3://... : objects, no rename (artefacts_url.py)
            from .artefacts_url import UrlArtefactWriter

            cls = UrlArtefactWriter
        return super().__new__(cls)

    def __init__(self, out: Path | str, kind: Kind, settings: dict[str, Any], inputs: list[InputRef] | None = None,
                 overwrite: bool = False, resume: bool = True, raw_inputs: Sequence[str | Path] = (),
                 shard: tuple[int, int] = (0, 1)):
        self.out = Path(out)
        absolute = Path(os.path.abspath(self.out))
        where = Path(os.path.realpath(absolute.parent)) / absolute.name  # one lock whatever path names the parent
        self.partial = Path(f"{where}.partial")
        self.kind = kind
        self.settings = settings
        self.inputs = inputs or []
        self.raw_inputs = list(raw_inputs)
        self.overwrite = overwrite
        self.resume = resume
        self.resumed = False
        self.lock = OutputLock(where, shard)

    def __enter__(self) -> "ArtefactWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock; an uncommitted ``OUT.partial`` stays for a later resume."""
        self.lock.release()

    def store_path(self, name: str) -> str:
        """Where the step writes its zarr store ``name`` (in ``OUT.partial``; for a URL output, on the object store)."""
        from .io.store import store_path

        return store_path(self.stores, name)

    @property
    def stores(self) -> Path | str:
        """The directory (or URL prefix) the step's zarr stores are written in."""
        return self.partial

    def check_inputs(self) -> None:
        """Refuse an output that is, lies inside or contains an input (a raw path, an input artefact or its upstream)."""
        sources = [(p, None) for p in _raw_paths(self.raw_inputs)] + _upstream(self.inputs)
        for target in (self.out, self.partial):
            where = _normal(target)
            for path, via in sources:
                relation = _relation(where, _normal(path))
                if relation is None:
                    continue
                what = f"the input {path}" if via in (None, path) else f"{path}, which the input {via} was made from"
                raise ArtefactError(f"the output {target} {relation} {what}; writing there would destroy it, so choose "
                                    "an output directory that neither is, lies inside nor contains an input.")

    def check_out(self) -> None:
        """Refuse to touch what the user already has: only an empty directory, or with ``overwrite`` a medgen
        artefact holding nothing but the files its manifest lists, is replaced."""
        out = self.out
        if not os.path.lexists(out) or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
            return
        check_replaceable(out, os.listdir(out) if out.is_dir() else [], self.overwrite)

    def open(self) -> Path:
        self.check_inputs()
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire(self)
        except LockError as err:
            raise ArtefactError(str(err)) from None
        try:
            self.check_out()
            if os.path.lexists(self.partial):
                self._reuse_or_discard()
            if not self.resumed:
                self._create_partial()
            _atomic_write_text(self.partial / SETTINGS_FILE, _settings_yaml(self.settings))
        except BaseException:
            self.close()
            raise
        return self.partial

    def _reuse_or_discard(self) -> None:
        """Resume, discard or refuse the existing ``OUT.partial`` (only ever one that medgen marked as its own)."""
        partial = self.partial
        ours = partial.is_dir() and not partial.is_symlink() and (partial / MARKER).is_file()
        if not ours:
            if partial.is_dir() and not partial.is_symlink() and not any(partial.iterdir()):
                partial.rmdir()  # an empty directory: nothing to lose
                return
            raise ArtefactError(f"{partial} was not created by medgen (it has no {MARKER} mark), so medgen will not "
                                "delete, reuse or resume it; move it away (delete it yourself if it is an interrupted "
                                "run of an older medgen) or choose another output directory.")
        if self._resumable(partial):
            self.resumed = True
        else:
            shutil.rmtree(partial)

    def _resumable(self, partial: Path | str) -> bool:
        """Whether medgen's interrupted run in ``partial`` is resumed (True) or discarded (False); raises when
        neither is allowed (other settings or changed inputs without ``overwrite``)."""
        try:
            old = read_manifest(partial)
        except ArtefactError:
            old = None
        same = old is not None and old.kind == self.kind and old.settings == self.settings
        changed = self._changed_input(old) if same else None
        if same and self.resume and changed is None:
            return True
        elif same and self.resume and not self.overwrite:
            raise ArtefactError(f"the input {changed.path} ({changed.role}) changed after {partial} was started from "
                                "it, so the run cannot be resumed; pass --overwrite to start again.")
        elif self.overwrite or old is None:
            return False
        else:
            raise ArtefactError(
                f"{partial} holds an interrupted run with different settings; "
                "pass --overwrite to discard it, or re-run with the settings it was started with."
                if not same else
                f"{partial} holds an interrupted run; pass --resume to continue it or --overwrite to discard it."
            )

    def _changed_input(self, old: Manifest) -> InputRef | None:
        """An input re-made since the interrupted run read it (matched by role and path), if any."""
        recorded = {(ref.role, _normal(ref.path)): ref.sha256 for ref in old.inputs}
        for ref in self.inputs:
            sha = recorded.get((ref.role, _normal(ref.path)))
            if sha is not None and sha != ref.sha256:
                return ref
        return None

    def _create_partial(self) -> None:
        """Make ``OUT.partial`` with its mark and running manifest in one rename, so it is never unmarked."""
        tmp = self.partial.with_name(f"{self.partial.name}.new-{uuid.uuid4().hex[:12]}")
        os.mkdir(tmp)
        try:
            (tmp / MARKER).write_text(marker_text(self.kind))
            write_manifest(tmp, Manifest(kind=self.kind, settings=self.settings, inputs=self.inputs))
            os.rename(tmp, self.partial)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (self.partial / MARKER).is_file():
                raise
            self._reuse_or_discard()  # another shard made it first
            if not self.resumed:
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def commit(self, summary: dict[str, Any] | None = None) -> Path:
        """Mark the artefact complete and move it into place."""
        self._hold_lock()
        manifest = read_manifest(self.partial)
        files = sorted(p.name for p in self.partial.iterdir() if p.name not in (MANIFEST, MARKER))
        manifest = manifest.model_copy(update={"status": "complete", "files": files, "summary": summary or {},
                                               "medgen_version": __version__})
        write_manifest(self.partial, manifest)
        if os.path.lexists(self.out):
            self.check_out()  # still only a medgen artefact holding its own files, or an empty directory
            trash = self.out.parent / f"{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.mkdir(trash)  # made here, so never a directory of the user's
            os.replace(self.out, trash / self.out.name)
            try:
                os.replace(self.partial, self.out)
            except OSError:
                os.replace(trash / self.out.name, self.out)  # put the old artefact back
                trash.rmdir()
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.partial, self.out)
        (self.out / MARKER).unlink(missing_ok=True)
        self.close()
        return self.out

    def _hold_lock(self) -> None:
        """Before committing: the lock must still be this writer's (taken again if someone deleted it)."""
        if self.lock.held():
            return
        try:
            self.lock.acquire(self)
            log.warning("%s was removed while this run was writing %s; took it again", self.lock.path, self.out)
        except LockError as err:
            raise StepFailed(f"{self.out} was locked by another run while this one was writing ({err}); nothing was "
                             f"committed and {self.partial} is kept.") from None


def marker_text(kind: str) -> str:
    """What the ``.medgen-partial`` mark holds: who made the partial, when, where."""
    mark = {"created_by": "medgen", "medgen_version": __version__, "kind": kind, "created": _now(),
            "pid": os.getpid(), "host": socket.gethostname()}
    return json.dumps(mark) + "\n"


def _settings_yaml(settings: dict[str, Any]) -> str:
    import yaml

    header = "# Resolved settings of this artefact; pass back with --config to repeat the run.\n"
    return header + yaml.safe_dump(settings, sort_keys=False)

