"""The artefact manifest (DESIGN.md, "The artefact contract"): its model, its constants and how it is read.

``manifest.json`` records the artefact's ``kind``, ``schema_version``, ``medgen_version``, ``created``, the
resolved ``settings``, the ``inputs`` it was made from (path + sha256 of their manifest), its ``files``, a
step-specific ``summary`` (typed in `medgen_cli.loaders.summaries`) and ``status``. Use the public API in
`medgen_cli.artefacts`; this module is its lowest layer (the writer and ``require`` build on it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .errors import UsageError
from .io import fs
from .safety import is_url

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
def load_json(path: Path | str) -> Any:
    return json.loads(fs.read_text(path))
