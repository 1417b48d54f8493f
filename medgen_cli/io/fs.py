"""Artefact files on a local disk or at any fsspec URL (``s3://bucket/run/ae``, ``gs://...``, ``memory://...``).

A small layer over fsspec that the artefact contract (``artefacts.py``) and the steps use for what is not a
zarr store (stores go through zarr, which opens URLs itself): manifests, settings, ``model.json``,
``model.safetensors``, locks. Local paths keep their exact old behaviour (``pathlib`` and ``os``; an atomic
write is a temporary file renamed into place); a URL is one object per file (an object store has no rename,
but one PUT is atomic: an object is either absent or whole).

Storage options (credentials, endpoint) come from the environment, exactly as for the zarr stores, which
open URLs through the same fsspec filesystems: fsspec's own ``FSSPEC_<PROTOCOL>`` (a JSON dict of options,
e.g. ``FSSPEC_S3='{"endpoint_url": "http://127.0.0.1:9000"}'``) or ``FSSPEC_<PROTOCOL>_<OPTION>`` variables,
and the protocol's usual ones (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ...).
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any, Iterable

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")  # s3://, gs://, https://, memory://; not C:/


def is_url(path: Path | str) -> bool:
    return isinstance(path, str) and bool(URL.match(path))


def normal_url(url: str) -> str:
    """``S3://b//run/./ae/`` -> ``s3://b/run/ae``: one spelling per location."""
    scheme, _, rest = url.partition(":")
    return f"{scheme.lower()}://{posixpath.normpath('/' + rest.lstrip('/')).lstrip('/')}"


def location(path: Path | str) -> Path | str:
    """A path as the layer handles it: a normalised URL string, or a ``Path`` (``Path`` would turn ``s3://b``
    into ``s3:/b``, so a URL must never go through it)."""
    text = str(path)
    return normal_url(text) if URL.match(text) else Path(path)


def join(base: Path | str, *names: str) -> Path | str:
    """``base/name/...`` for a local path or a URL."""
    base = location(base)
    if isinstance(base, Path):
        return base.joinpath(*names)
    return "/".join([base.rstrip("/"), *names])


def name_of(path: Path | str) -> str:
    return posixpath.basename(str(location(path)).rstrip("/"))


def filesystem(url: str) -> tuple[Any, str]:
    """(the fsspec filesystem, the path inside it) of a URL; options from the environment (module docstring)."""
    try:
        import fsspec

        return fsspec.core.url_to_fs(url)
    except ImportError as err:  # fsspec itself, or the protocol's package (s3fs, gcsfs, ...)
        from ..errors import UsageError

        raise UsageError(f"{url} cannot be opened: {err}; install medgen's s3 extra (pip install "
                         "'medgen-cli[s3]') or the fsspec package of that protocol.") from None


def _fresh(url: str) -> tuple[Any, str]:
    """The filesystem with its listing cache of ``url`` dropped (another process may have written there)."""
    fs, inner = filesystem(url)
    fs.invalidate_cache(inner)
    return fs, inner


# ------------------------------------------------------------------------------------------------- reading
def exists(path: Path | str) -> bool:
    """A file, a directory, or (URL) an object or a prefix with objects below it."""
    path = location(path)
    if isinstance(path, Path):
        return path.exists()
    fs, inner = _fresh(path)
    return bool(fs.exists(inner))


def isfile(path: Path | str) -> bool:
    path = location(path)
    if isinstance(path, Path):
        return path.is_file()
    fs, inner = _fresh(path)
    return bool(fs.isfile(inner))


def listdir(path: Path | str) -> list[str]:
    """Names directly below ``path`` (files and sub-directories or prefixes), sorted; [] when there are none."""
    path = location(path)
    if isinstance(path, Path):
        return sorted(os.listdir(path)) if path.is_dir() else []
    fs, inner = _fresh(path)
    try:
        entries = fs.ls(inner, detail=False)
    except FileNotFoundError:
        return []
    base = inner.rstrip("/")
    return sorted({posixpath.basename(str(e).rstrip("/")) for e in entries if str(e).rstrip("/") != base})


def find(url: str) -> list[str]:
    """Every object below a URL prefix, as paths relative to it."""
    fs, inner = _fresh(url)
    base = inner.rstrip("/") + "/"
    return sorted(k[len(base):] for k in fs.find(base) if k.startswith(base))


def read_bytes(path: Path | str) -> bytes:
    path = location(path)
    if isinstance(path, Path):
        return path.read_bytes()
    fs, inner = _fresh(path)
    return fs.cat_file(inner)


def read_text(path: Path | str) -> str:
    return read_bytes(path).decode("utf-8")


def load_safetensors(path: Path | str, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a ``.safetensors`` file on ``device`` (memory-mapped when local, one read when a URL)."""
    from safetensors.torch import load, load_file

    path = location(path)
    if isinstance(path, Path):
        return load_file(str(path), device=device)
    return {k: v.to(device) for k, v in load(read_bytes(path)).items()}


# ------------------------------------------------------------------------------------------------- writing
def write_bytes(path: Path | str, data: bytes) -> None:
    """Write a whole file atomically: a temporary file renamed into place, or one PUT of an object."""
    path = location(path)
    if isinstance(path, Path):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, inner = filesystem(path)
    fs.pipe_file(inner, data)
    fs.invalidate_cache(inner)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def create(path: str, data: bytes) -> bool:
    """Create the object ``path`` holding ``data`` only if it does not exist (S3 ``If-None-Match: *``, which
    s3fs sends for ``mode="create"``): True if this call created it, False if it existed."""
    fs, inner = filesystem(path)
    try:
        fs.pipe_file(inner, data, mode="create")
    except FileExistsError:
        return False
    finally:
        fs.invalidate_cache(inner)
    return True


def remove(path: Path | str) -> None:
    """Delete one file or object; nothing happens if it is absent."""
    path = location(path)
    if isinstance(path, Path):
        path.unlink(missing_ok=True)
        return
    fs, inner = _fresh(path)
    try:
        fs.rm_file(inner)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(inner)


def remove_tree(url: str) -> None:
    """Delete every object below the URL prefix (callers only pass prefixes medgen marked as its own)."""
    fs, inner = _fresh(url)
    keys = fs.find(inner.rstrip("/") + "/")
    if fs.isfile(inner):
        keys.append(inner)
    if keys:
        fs.rm(keys)
    fs.invalidate_cache(inner)


def copy_tree(src: str, dst: str) -> int:
    """Copy every object below ``src`` to the same place below ``dst`` inside the store (server-side
    copies: no data passes through this machine); returns how many."""
    names = find(src)
    if names:
        fs, a = filesystem(src)
        _, b = filesystem(dst)
        fs.copy([f"{a}/{n}" for n in names], [f"{b}/{n}" for n in names])
        fs.invalidate_cache(b)
    return len(names)


def upload_tree(local: Path, url: str, skip: Iterable[str] = ()) -> int:
    """Upload every file below the local directory ``local`` to the same place below ``url`` (top-level
    names in ``skip`` are left out); returns how many files."""
    skip = set(skip)
    pairs = []
    for root, _, files in os.walk(local):
        for f in files:
            rel = Path(root, f).relative_to(local)
            if rel.parts[0] not in skip:
                pairs.append((str(Path(root, f)), "/".join((url, *rel.parts))))
    if pairs:
        fs, _ = filesystem(url)
        fs.put([a for a, _ in pairs], [filesystem(b)[1] for _, b in pairs])
        fs.invalidate_cache(filesystem(url)[1])
    return len(pairs)


def store_names(artefact: Path | str) -> list[str]:
    """The names of the zarr stores in an artefact directory or prefix (``main`` for ``main.zarr``)."""
    return [n[:-len(".zarr")] for n in listdir(artefact) if n.endswith(".zarr")]
