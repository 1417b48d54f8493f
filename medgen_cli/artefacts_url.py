"""The artefact contract at an fsspec URL (``--out s3://bucket/run/ae``): an object store has no rename.

``ArtefactWriter(out)`` with a URL ``out`` is a `UrlArtefactWriter`. Layout while a step runs::

    OUT.lock                  the one writer's lock object, created with a conditional PUT (If-None-Match: *)
    OUT.partial/.medgen-partial   written first: the prefix is medgen's (nothing unmarked is ever deleted)
    OUT.partial/manifest.json     status "running", the settings and inputs (what a resume is compared with)
    OUT.partial/<name>.zarr/  the step's stores, written straight to the bucket item by item (resumable)
    <staging>/                a local directory for everything else (settings.yaml, model.safetensors,
                              model.json, checkpoints/, metrics.jsonl, plots/, previews/): ``open()`` returns it

``commit()``: (1) ``OUT/.medgen-partial`` (the final prefix is now medgen's, and reads as unfinished);
(2) an older artefact at ``OUT`` loses its ``manifest.json`` first, then its listed files; (3) the stores are
copied server-side from ``OUT.partial/`` to ``OUT/`` and the staged files uploaded to ``OUT/``; (4)
``OUT/manifest.json`` (status "complete", listing every top-level file) is written LAST, in one PUT; (5) the
mark, ``OUT.partial/`` and the staging directory are removed. A reader (``require``) accepts ``OUT`` only when
its manifest exists, says complete and every file it lists is there, so a kill at any moment leaves either no
complete-looking artefact (and a re-run resumes or redoes it) or the complete one.

The staging directory is ``$MEDGEN_STAGING`` (default ``~/.cache/medgen/staging``) ``/<name>-<hash of OUT>``:
a re-run of the same command on the same machine finds it again (checkpoints, progress), while the stores
resume from the bucket on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

from .artefacts_manifest import MANIFEST, MARKER, SETTINGS_FILE, ArtefactError, InputRef, Kind, Manifest, _now, read_manifest
from .artefacts_writer import ArtefactWriter, _settings_yaml, check_replaceable, marker_text
from .io import fs
from .safety import LockError, OutputLock

log = logging.getLogger(__name__)


def staging_dir(out: str) -> Path:
    """The local directory a URL output's non-store files are written in (one per output URL)."""
    root = Path(os.environ.get("MEDGEN_STAGING") or Path.home() / ".cache" / "medgen" / "staging").expanduser()
    digest = hashlib.sha256(out.encode()).hexdigest()[:16]
    return root / f"{fs.name_of(out)}-{digest}.partial"


class UrlLock(OutputLock):
    """``OUT.lock`` as an object, created with a conditional PUT (``If-None-Match: *``), so of two writers
    exactly one creates it. A lock of a process of this host that is no longer running is stale and taken
    over (deleted, then created again conditionally); two processes taking over the same stale lock at the
    same moment could both delete it (S3 has no conditional delete here), so a stale lock is the one case
    where the guarantee is weaker. A lock of another host is never judged: the user is told how to remove it.
    """

    def __init__(self, out: str):
        self.out = out
        self.path = f"{out}.lock"  # a str: Path would turn s3://b into s3:/b
        self.others = lambda: []
        self.token = None
        self._finalizer = None

    def _create(self, record: dict[str, Any]) -> bool:
        return fs.create(self.path, (json.dumps(record) + "\n").encode())

    def _take_over(self, held: dict[str, Any]) -> None:
        from .safety import _read_lock

        if _read_lock(self.path) == held:  # not replaced since it was read
            fs.remove(self.path)


class UrlArtefactWriter(ArtefactWriter):
    """`ArtefactWriter` for an fsspec URL (see the module docstring); same arguments, except that
    ``shard`` must be (0, 1): shards of one preprocess run need a shared local or network file system."""

    def __init__(self, out: str, kind: Kind, settings: dict[str, Any], inputs: list[InputRef] | None = None,
                 overwrite: bool = False, resume: bool = True, raw_inputs: Sequence[str | Path] = (),
                 shard: tuple[int, int] = (0, 1)):
        if shard[1] != 1:
            raise ArtefactError(f"--shard needs a local or shared file system output, not {out}; run one preprocess "
                                "without --shard to write to an object store.")
        self.out = str(fs.location(out))
        self.remote = f"{self.out}.partial"
        self.partial = staging_dir(self.out)
        self.kind, self.settings, self.inputs = kind, settings, inputs or []
        self.raw_inputs = list(raw_inputs)
        self.overwrite, self.resume, self.resumed = overwrite, resume, False
        self.lock = UrlLock(self.out)

    @property
    def stores(self) -> str:
        return self.remote  # stores go straight to the bucket, item by item

    def check_inputs(self) -> None:
        partial, self.partial = self.partial, self.remote  # the output's partial is the remote prefix
        try:
            super().check_inputs()
        finally:
            self.partial = partial

    def check_out(self) -> None:
        """Refuse what medgen did not make: only an empty prefix, medgen's interrupted commit (its mark, no
        manifest) or, with ``overwrite``, a medgen artefact holding only its listed files is replaced."""
        names = fs.listdir(self.out)
        if not names or (MARKER in names and MANIFEST not in names):
            return
        check_replaceable(self.out, names, self.overwrite)

    def open(self) -> Path:
        self.check_inputs()
        try:
            self.lock.acquire(self)
        except LockError as err:
            raise ArtefactError(str(err)) from None
        try:
            self.check_out()
            if fs.listdir(self.remote):
                self._reuse_or_discard()
            if not self.resumed:
                self._create_partial()
            elif not (self.partial / MARKER).is_file() or not self._staging_matches():
                self._fresh_staging()  # resumed on another machine, the staging was cleared, or it is another run's
            fs.write_text(self.partial / SETTINGS_FILE, _settings_yaml(self.settings))
        except BaseException:
            self.close()
            raise
        return self.partial

    def _reuse_or_discard(self) -> None:
        if not fs.isfile(fs.join(self.remote, MARKER)):
            raise ArtefactError(f"{self.remote} was not created by medgen (it has no {MARKER} mark), so medgen will not "
                                "delete, reuse or resume it; move it away or choose another output.")
        if self._resumable(self.remote):
            self.resumed = True
        else:
            fs.remove_tree(self.remote)

    def _staging_matches(self) -> bool:
        """Whether the local staging belongs to the run in the remote partial (the same running manifest, which
        holds the run's start time): a staging left by a run that another machine discarded and restarted is not
        resumed from (its checkpoints and settings are that older run's)."""
        try:
            return (self.partial / MANIFEST).read_text() == fs.read_text(fs.join(self.remote, MANIFEST))
        except OSError:
            return False

    def _fresh_staging(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)  # medgen's own directory in its cache
        self.partial.mkdir(parents=True)
        (self.partial / MARKER).write_text(marker_text(self.kind))
        fs.write_text(self.partial / MANIFEST, fs.read_text(fs.join(self.remote, MANIFEST)))

    def _create_partial(self) -> None:
        """The mark first (the prefix is medgen's before anything else is in it), then the running manifest."""
        fs.write_text(fs.join(self.remote, MARKER), marker_text(self.kind))
        manifest = Manifest(kind=self.kind, settings=self.settings, inputs=self.inputs)
        fs.write_text(fs.join(self.remote, MANIFEST), manifest.model_dump_json(indent=2) + "\n")
        self._fresh_staging()

    def commit(self, summary: dict[str, Any] | None = None) -> str:  # type: ignore[override]
        """Copy the stores and upload the staged files to ``OUT/``, then write its manifest last."""
        self._hold_lock()
        manifest = read_manifest(self.partial)
        skip = {MANIFEST, MARKER}
        stores = [n for n in fs.listdir(self.remote) if n not in skip]
        # an object store has no empty folders: a staged folder without files (pictures/ with --max-pictures 0)
        # is not uploaded, so it must not be listed either (a reader checks every listed name)
        staged = [p.name for p in self.partial.iterdir()
                  if p.name not in skip and (p.is_file() or any(q.is_file() for q in p.rglob("*")))]
        manifest = manifest.model_copy(update={"status": "complete", "files": sorted(set(stores) | set(staged)),
                                               "summary": summary or {}})
        self._clear_out()
        for name in stores:
            fs.copy_tree(fs.join(self.remote, name), fs.join(self.out, name))
        fs.upload_tree(self.partial, self.out, skip=skip)
        fs.write_text(fs.join(self.out, MANIFEST), manifest.model_dump_json(indent=2) + "\n")  # last: now complete
        fs.remove(fs.join(self.out, MARKER))
        fs.remove_tree(self.remote)
        shutil.rmtree(self.partial, ignore_errors=True)
        self.close()
        return self.out

    def _clear_out(self) -> None:
        """Mark ``OUT/`` as medgen's commit in progress, then remove an older artefact there (manifest first)."""
        names = fs.listdir(self.out)
        if names:
            self.check_out()  # still empty, medgen's interrupted commit, or a medgen artefact of its own files
        fs.write_text(fs.join(self.out, MARKER), json.dumps({"committing": _now(), "id": uuid.uuid4().hex}) + "\n")
        if MANIFEST in names:
            fs.remove(fs.join(self.out, MANIFEST))  # the old artefact stops reading as complete before it changes
        for name in names:
            if name not in (MANIFEST, MARKER):
                target = fs.join(self.out, name)
                if fs.isfile(target):
                    fs.remove(target)
                else:
                    fs.remove_tree(target)
