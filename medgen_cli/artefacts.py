"""The artefact contract (DESIGN.md): manifest model, atomic creation, require, lineage.

Every step writes one directory holding ``manifest.json`` + ``settings.yaml`` + its payload. The
step works in ``OUT.partial/`` and renames it to ``OUT`` only when done, so a crash never leaves a
directory that looks complete; an interrupted ``OUT.partial/`` is resumed when the settings and the
inputs match. Nothing a user has is ever lost: medgen deletes or reuses only what it made (a partial
carries the ``.medgen-partial`` mark, an artefact a medgen manifest listing its files), an output may
not be, lie inside or contain an input, and one process at a time writes an output (``OUT.lock``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .errors import StepFailed, UsageError
from .io import fs
from .safety import LockError, OutputLock, is_url, normal_path as _normal, raw_paths as _raw_paths, relation as _relation

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SETTINGS_FILE = "settings.yaml"
MARKER = ".medgen-partial"  # written into every OUT.partial medgen creates; nothing without it is touched
OS_LITTER = {".DS_Store", "Thumbs.db", "desktop.ini"}  # file-browser caches, not user content

Kind = Literal["preprocessed", "autoencoder", "latents", "prior", "samples", "evaluation", "export"]
KIND_MAKERS = {
    "preprocessed": "medgen preprocess",
    "autoencoder": "medgen train-ae",
    "latents": "medgen encode-latents",
    "prior": "medgen train-prior",
    "samples": "medgen sample",
    "evaluation": "medgen evaluate",
    "export": "medgen export",
}


class ArtefactError(UsageError):
    """An artefact directory is missing, incomplete, of the wrong kind or would be overwritten."""


class InputRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(description="What the input is for: data, autoencoder, latents, condition, ...")
    path: str
    kind: str
    sha256: str = Field(description="sha256 of the input's manifest.json when it was read.")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Kind
    schema_version: int = SCHEMA_VERSION
    medgen_version: str = __version__
    created: str = Field(default_factory=lambda: _now())
    status: Literal["running", "complete"] = "running"
    settings: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict, description="Step-specific facts (item counts, splits, metrics).")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------ reading
def manifest_sha256(path: Path | str) -> str:
    return hashlib.sha256(fs.read_bytes(fs.join(path, MANIFEST))).hexdigest()


def read_manifest(path: Path | str) -> Manifest:
    path = fs.location(path)  # a Path, or a URL (s3://...) read through fsspec
    file = fs.join(path, MANIFEST)
    try:
        text = fs.read_text(file)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if not fs.exists(path):
            raise ArtefactError(f"{path} does not exist.") from None
        raise ArtefactError(f"{path} is not a medgen artefact (it has no {MANIFEST}).") from None
    try:
        manifest = Manifest.model_validate_json(text)
    except ValueError:
        raise ArtefactError(f"{file} is damaged or not a medgen manifest; re-create {path} with the step that made it.") from None
    moved = [_relocated(ref, path) for ref in manifest.inputs]
    if any(new is not ref for new, ref in zip(moved, manifest.inputs)):
        manifest = manifest.model_copy(update={"inputs": moved})
    return manifest


def _relocated(ref: InputRef, owner: Path | str) -> InputRef:
    """``ref`` with its path moved beside ``owner`` when the two were moved (or copied) together.

    Manifests record inputs by absolute path. When that path is gone and ``owner``'s folder holds an artefact
    of the input's name whose manifest has the recorded sha256 -- the very input, moved with it (a runs/
    folder copied to another machine, a test fixture) -- that one is used. Anything else keeps the recorded
    path, and reading it fails with the usual sentence.
    """
    recorded = Path(ref.path)
    if isinstance(owner, str) or is_url(ref.path) or recorded.exists():  # owner a URL: inputs are never moved beside it
        return ref
    beside = owner.parent / recorded.name
    try:
        if (beside / MANIFEST).is_file() and manifest_sha256(beside) == ref.sha256:
            return ref.model_copy(update={"path": str(beside.resolve())})
    except OSError:
        pass
    return ref


def require(path: Path | str, kind: Kind | tuple[Kind, ...]) -> Manifest:
    """Read ``path``'s manifest and check it is complete, of ``kind`` and of a schema we read."""
    path = fs.location(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    wanted = " or ".join(kinds)
    if _unfinished(path):
        raise ArtefactError(f"{path} is unfinished (only {path}.partial exists); re-run the step that makes it to resume.")
    manifest = read_manifest(path)
    if manifest.schema_version > SCHEMA_VERSION:
        raise ArtefactError(
            f"{path} was written by medgen {manifest.medgen_version} with schema {manifest.schema_version}, "
            f"newer than this medgen ({__version__}, schema {SCHEMA_VERSION}) reads; upgrade medgen."
        )
    if manifest.kind not in kinds:
        raise ArtefactError(
            f"{path} is a {manifest.kind} artefact, but a {wanted} artefact is needed here (made by {KIND_MAKERS[kinds[0]]})."
        )
    if manifest.status != "complete":
        raise ArtefactError(f"{path} is incomplete (status {manifest.status}); re-run the step that makes it.")
    if fs.is_url(path):  # objects are not renamed into place together: check the listed ones arrived
        missing = sorted(set(manifest.files) - set(fs.listdir(path)))
        if missing:
            raise ArtefactError(f"{path} is incomplete: {', '.join(missing[:5])} listed in its {MANIFEST} is missing; "
                                "re-run the step that makes it.")
    return manifest


def _unfinished(path: Path | str) -> bool:
    """Only an interrupted run's ``OUT.partial`` (or, at a URL, an interrupted commit) is there, no manifest."""
    partial_mark = fs.join(f"{path}.partial", MARKER)
    if not fs.is_url(path):
        return not path.exists() and fs.isfile(partial_mark)
    return not fs.isfile(fs.join(path, MANIFEST)) and (fs.isfile(partial_mark) or fs.isfile(fs.join(path, MARKER)))


def input_ref(path: Path | str, role: str, kind: Kind | tuple[Kind, ...]) -> InputRef:
    """``require`` an input and describe it for the new manifest's ``inputs``."""
    manifest = require(path, kind)
    where = fs.location(path)
    where = where if fs.is_url(where) else str(where.resolve())
    return InputRef(role=role, path=where, kind=manifest.kind, sha256=manifest_sha256(path))


MAX_LINEAGE_DEPTH, MAX_LINEAGE_NODES = 20, 500


def lineage(path: Path | str, _ancestors: tuple[str, ...] = (), _budget: list[int] | None = None) -> dict[str, Any]:
    """The artefact and its inputs, recursively: ``{path, kind, status, inputs: [...]}``.

    Finite whatever the manifests say: an input that is one of its own ancestors (a manifest pointing at
    itself, or a loop of two) becomes ``{"path", "cycle": True, "inputs": []}``, and a tree deeper than
    ``MAX_LINEAGE_DEPTH`` or larger than ``MAX_LINEAGE_NODES`` ends in ``{"path", "truncated": True}``.
    """
    path = fs.location(path)
    budget = [MAX_LINEAGE_NODES] if _budget is None else _budget
    try:
        manifest = read_manifest(path)
    except ArtefactError as err:
        return {"path": str(path), "error": str(err), "inputs": []}
    node: dict[str, Any] = {"path": str(path), "kind": manifest.kind, "status": manifest.status, "created": manifest.created}
    chain = (*_ancestors, _normal(path))
    children = []
    for ref in manifest.inputs:
        budget[0] -= 1
        if _normal(ref.path) in chain:
            child = {"path": ref.path, "kind": ref.kind, "cycle": True, "inputs": []}
        elif len(chain) > MAX_LINEAGE_DEPTH or budget[0] < 0:
            child = {"path": ref.path, "kind": ref.kind, "truncated": True, "inputs": []}
        else:
            child = lineage(ref.path, chain, budget)
        child["role"] = ref.role
        try:
            if "error" not in child and manifest_sha256(ref.path) != ref.sha256:
                child["changed"] = True  # the input was re-made after this artefact read it
        except OSError:
            pass
        children.append(child)
    node["inputs"] = children
    return node


def find_upstream(path: Path | str, kind: Kind, role: str | None = None) -> Path | str:
    """Follow ``inputs`` from ``path`` until an artefact of ``kind`` (e.g. prior -> latents -> autoencoder)."""
    path = fs.location(path)
    seen: set[str] = {_normal(path)}  # each artefact once, the start included: loops end
    frontier = [path]
    while frontier:
        current = frontier.pop(0)
        manifest = require(current, manifest_kind(current))
        if manifest.kind == kind and current is not path:
            return current
        for ref in manifest.inputs:
            if _normal(ref.path) not in seen and (role is None or ref.role == role or ref.kind != kind):
                seen.add(_normal(ref.path))
                frontier.append(fs.location(ref.path))
    raise ArtefactError(f"no {kind} artefact found in the lineage of {path}.")


def manifest_kind(path: Path | str) -> Kind:
    return read_manifest(path).kind


# ---------------------------------------------------------------------------- outputs beside inputs
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


def load_json(path: Path | str) -> Any:
    return json.loads(fs.read_text(path))
