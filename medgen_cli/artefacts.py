"""The artefact directory contract (DESIGN.md): manifest model, atomic creation, require, lineage.

Every step writes one directory holding ``manifest.json`` + ``settings.yaml`` + its payload. The
step works in ``OUT.partial/`` and renames it to ``OUT`` only when done, so a crash never leaves a
directory that looks complete; an interrupted ``OUT.partial/`` is resumed when the settings match.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .errors import UsageError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SETTINGS_FILE = "settings.yaml"

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
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    status: Literal["running", "complete"] = "running"
    settings: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    summary: dict[str, Any] = Field(default_factory=dict, description="Step-specific facts (item counts, splits, metrics).")


# ------------------------------------------------------------------------------------------ reading
def manifest_sha256(path: Path | str) -> str:
    return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    file = path / MANIFEST
    if not path.exists():
        raise ArtefactError(f"{path} does not exist.")
    if not file.is_file():
        raise ArtefactError(f"{path} is not a medgen artefact (it has no {MANIFEST}).")
    try:
        return Manifest.model_validate_json(file.read_text())
    except ValueError:
        raise ArtefactError(f"{file} is damaged or not a medgen manifest; re-create {path} with the step that made it.") from None


def require(path: Path | str, kind: Kind | tuple[Kind, ...]) -> Manifest:
    """Read ``path``'s manifest and check it is complete, of ``kind`` and of a schema we read."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    wanted = " or ".join(kinds)
    if not path.exists() and Path(f"{path}.partial").exists():
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
    return manifest


def input_ref(path: Path | str, role: str, kind: Kind | tuple[Kind, ...]) -> InputRef:
    """``require`` an input and describe it for the new manifest's ``inputs``."""
    manifest = require(path, kind)
    return InputRef(role=role, path=str(Path(path).resolve()), kind=manifest.kind, sha256=manifest_sha256(path))


def lineage(path: Path | str, _depth: int = 0) -> dict[str, Any]:
    """The artefact and its inputs, recursively: ``{path, kind, status, inputs: [...]}``."""
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except ArtefactError as err:
        return {"path": str(path), "error": str(err), "inputs": []}
    node: dict[str, Any] = {"path": str(path), "kind": manifest.kind, "status": manifest.status, "created": manifest.created}
    children = []
    for ref in manifest.inputs:
        child = lineage(ref.path, _depth + 1) if _depth < 20 else {"path": ref.path, "inputs": []}
        child["role"] = ref.role
        if "error" not in child and manifest_sha256(ref.path) != ref.sha256:
            child["changed"] = True  # the input was re-made after this artefact read it
        children.append(child)
    node["inputs"] = children
    return node


def find_upstream(path: Path | str, kind: Kind, role: str | None = None) -> Path:
    """Follow ``inputs`` from ``path`` until an artefact of ``kind`` (e.g. prior -> latents -> autoencoder)."""
    path = Path(path)
    seen: set[str] = set()
    frontier = [path]
    while frontier:
        current = frontier.pop(0)
        manifest = require(current, manifest_kind(current))
        if manifest.kind == kind and current != path:
            return current
        for ref in manifest.inputs:
            if ref.path not in seen and (role is None or ref.role == role or ref.kind != kind):
                seen.add(ref.path)
                frontier.append(Path(ref.path))
    raise ArtefactError(f"no {kind} artefact found in the lineage of {path}.")


def manifest_kind(path: Path | str) -> Kind:
    return read_manifest(path).kind


# ------------------------------------------------------------------------------------------ writing
def _atomic_write_text(file: Path, text: str) -> None:
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, file)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    _atomic_write_text(directory / MANIFEST, manifest.model_dump_json(indent=2) + "\n")


class ArtefactWriter:
    """Create an artefact atomically.

    ``open()`` prepares ``OUT.partial/`` (fresh, or resumed when it holds the same settings) and
    writes a ``running`` manifest; ``commit()`` marks it complete and renames it to ``OUT``.

    Args:
        out: final directory.
        kind: artefact kind.
        settings: resolved settings (JSON-able dict), recorded in the manifest and settings.yaml.
        inputs: references to the artefacts read.
        overwrite: replace an existing ``OUT`` (only when it is a medgen artefact or empty) and
            discard a ``OUT.partial`` with other settings.
        resume: continue an interrupted ``OUT.partial`` with the same settings.
    """

    def __init__(self, out: Path | str, kind: Kind, settings: dict[str, Any], inputs: list[InputRef] | None = None,
                 overwrite: bool = False, resume: bool = True):
        self.out = Path(out)
        self.partial = Path(f"{self.out}.partial")
        self.kind = kind
        self.settings = settings
        self.inputs = inputs or []
        self.overwrite = overwrite
        self.resume = resume
        self.resumed = False

    def check_out(self) -> None:
        """Refuse to touch what the user already has unless ``overwrite``."""
        if self.out.exists():
            is_artefact = (self.out / MANIFEST).is_file()
            empty = self.out.is_dir() and not any(self.out.iterdir())
            if not (is_artefact or empty):
                raise ArtefactError(f"{self.out} exists and is not a medgen artefact; choose another output directory.")
            if is_artefact and not self.overwrite:
                raise ArtefactError(f"{self.out} already exists; pass --overwrite to replace it or choose another output directory.")

    def open(self) -> Path:
        self.check_out()
        if self.partial.exists():
            old = None
            try:
                old = read_manifest(self.partial)
            except ArtefactError:
                pass
            same = old is not None and old.kind == self.kind and old.settings == self.settings
            if same and self.resume:
                self.resumed = True
            elif self.overwrite or old is None:
                shutil.rmtree(self.partial)
            else:
                raise ArtefactError(
                    f"{self.partial} holds an interrupted run with different settings; "
                    "pass --overwrite to discard it, or re-run with the settings it was started with."
                    if not same else
                    f"{self.partial} holds an interrupted run; pass --resume to continue it or --overwrite to discard it."
                )
        self.partial.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(kind=self.kind, settings=self.settings, inputs=self.inputs)
        if self.resumed:
            manifest = read_manifest(self.partial)
        else:
            write_manifest(self.partial, manifest)
        _atomic_write_text(self.partial / SETTINGS_FILE, _settings_yaml(self.settings))
        return self.partial

    def commit(self, summary: dict[str, Any] | None = None) -> Path:
        """Mark the artefact complete and move it into place."""
        manifest = read_manifest(self.partial)
        files = sorted(
            str(p.relative_to(self.partial)) for p in self.partial.iterdir() if p.name not in (MANIFEST,)
        )
        manifest = manifest.model_copy(update={"status": "complete", "files": files, "summary": summary or {},
                                               "medgen_version": __version__})
        write_manifest(self.partial, manifest)
        if self.out.exists():
            self.check_out()  # still only a medgen artefact or an empty directory
            trash = Path(f"{self.out}.old-{os.getpid()}")
            os.replace(self.out, trash)
            os.replace(self.partial, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.partial, self.out)
        return self.out


def _settings_yaml(settings: dict[str, Any]) -> str:
    import yaml

    header = "# Resolved settings of this artefact; pass back with --config to repeat the run.\n"
    return header + yaml.safe_dump(settings, sort_keys=False)


def load_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())
