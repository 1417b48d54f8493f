"""The artefact contract (DESIGN.md): manifest model, atomic creation, require, lineage -- the public API.

Every step writes one directory holding ``manifest.json`` + ``settings.yaml`` + its payload, atomically
(`ArtefactWriter`, in ``artefacts_writer.py``; at a URL ``artefacts_url.py``); the manifest's model and
reading are in ``artefacts_manifest.py``. This module checks inputs (`require`, `input_ref`) and follows
the lineage (`lineage`, `find_upstream`), and is where the rest of medgen imports all of it from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import __version__
from .artefacts_manifest import (KIND_MAKERS, MANIFEST, MARKER, SCHEMA_VERSION, SETTINGS_FILE, ArtefactError, InputRef,
                                 Kind, Manifest, load_json, manifest_sha256, read_manifest)
from .artefacts_writer import ArtefactWriter, check_replaceable, marker_text, write_manifest
from .io import fs
from .safety import normal_path as _normal

__all__ = ["KIND_MAKERS", "MANIFEST", "MARKER", "MAX_LINEAGE_DEPTH", "MAX_LINEAGE_NODES", "SCHEMA_VERSION",
           "SETTINGS_FILE", "ArtefactError", "ArtefactWriter", "InputRef", "Kind", "Manifest", "check_replaceable",
           "find_upstream", "input_ref", "lineage", "load_json", "manifest_kind", "manifest_sha256", "marker_text",
           "read_manifest", "require", "write_manifest"]


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

