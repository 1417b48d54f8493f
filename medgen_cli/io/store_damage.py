"""Damage in an item store: finding it chunk by chunk and saying it in one sentence.

Every chunk of an item is written, even one equal to the fill value (zarr's ``write_empty_chunks``), and
the item records it (``all_chunks: true``), so a read that finds a chunk absent knows it was lost instead
of returning a blank image; each chunk carries a CRC-32C checksum (zarr's ``crc32c`` codec), so altered
bytes fail to decode instead of reading as noise.
A read that meets an absent or undecodable chunk, or unreadable item or group metadata, raises
`DamagedStore` naming the store, the item and the chunk, and what to re-run (the step that wrote the
artefact, from its manifest). `check_item` decodes every chunk of an item (``medgen inspect --check``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from ..errors import StepFailed

# the step that writes the stores of each artefact kind, for "re-run ..." advice
WRITERS = {"preprocessed": "preprocess", "latents": "encode-latents", "samples": "sample"}


class DamagedStore(StepFailed):
    """A store or one of its items cannot be read as it was written (exit 1); the message names both.

    A DataLoader worker re-raises an exception as ``type(err)("Caught ... Original Traceback ...")``;
    only the original sentence is kept, so a damaged item read in a worker still prints one line.
    """

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = [line for line in message.strip().splitlines() if line.strip()][-1]
            message = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(type(self).__name__) else last
        super().__init__(message)


def reason(err: BaseException) -> str:
    """A short cause: what zarr, blosc or json said, without raw bytes."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, json.JSONDecodeError):
        return "not valid JSON"
    if "checksum do not match" in text:
        return "checksum mismatch"
    if "blosc" in text.lower():
        return "the compressed bytes do not decode"
    return f"{type(err).__name__}: {text[:120]}" if text else type(err).__name__


def _remedy(path: str) -> str:
    """What to do about a damaged store: re-run the step that wrote it (from the artefact's manifest)."""
    try:
        kind = json.loads((Path(path).parent / "manifest.json").read_text())["kind"]
        return f"re-run medgen {WRITERS[kind]} to rebuild it"
    except (OSError, ValueError, KeyError, TypeError):
        return "re-run the step that wrote it"


def damaged(path: str, why: str, item_id: str | None = None) -> DamagedStore:
    """``<store> item <id>: <why>; re-run <the step that wrote it>.``"""
    where = path if item_id is None else f"{path} item {item_id}"
    return DamagedStore(f"{where}: {why}; {_remedy(path)}.")


def chunk_name(coords: tuple[int, ...]) -> str:
    return ".".join(str(c) for c in coords)


def blank_chunks(arr: zarr.Array, region: tuple[slice, ...], values: np.ndarray) -> list[tuple[int, ...]]:
    """Chunks overlapping ``region`` whose part of ``values`` is all zero bits (what an absent chunk reads as)."""
    bits = np.ascontiguousarray(values).view(f"u{values.itemsize}")  # integer test: fast for float16 too
    bounds = [r.indices(n)[:2] for r, n in zip(region, arr.shape)]
    axes = [range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0) for (lo, hi), c in zip(bounds, arr.chunks)]
    out = []
    for coords in itertools.product(*axes):
        part = tuple(slice(max(k * c, lo) - lo, min((k + 1) * c, hi) - lo)
                     for k, c, (lo, hi) in zip(coords, arr.chunks, bounds))
        if not bits[part].any():
            out.append(coords)
    return out


def missing_chunks(arr: zarr.Array, coords: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Those of ``coords`` whose chunk object is absent from the store (one concurrent lookup each)."""
    if not coords:
        return []
    store, base = arr.store_path.store, arr.store_path.path
    keys = [f"{base}/{arr.metadata.encode_chunk_key(c)}" for c in coords]

    async def exist():
        return await asyncio.gather(*(store.exists(k) for k in keys))

    return [c for c, ok in zip(coords, sync(exist())) if not ok]


def first_bad_chunk(arr: zarr.Array) -> tuple[int, ...] | None:
    """The first chunk of the array that does not decode (None if each decodes on its own)."""
    for coords in np.ndindex(*arr.cdata_shape):
        try:
            arr.blocks[coords]
        except Exception:  # noqa: BLE001
            return tuple(int(c) for c in coords)
    return None


def check_item(arr: zarr.Array, report: dict[str, Any], require_all: bool = True) -> str | None:
    """Decode every chunk of an item (counted in ``report["chunks"]``); why it is damaged, or None.
    ``require_all``: an absent chunk is damage (items that record ``all_chunks``), else it is skipped."""
    store, base = arr.store_path.store, arr.store_path.path

    async def listing():
        return {k async for k in store.list_prefix(f"{base}/")}

    present = sync(listing())
    for coords in np.ndindex(*arr.cdata_shape):
        report["chunks"] += 1
        key = f"{base}/{arr.metadata.encode_chunk_key(coords)}"
        if key not in present:
            if require_all:
                return f"chunk {chunk_name(coords)} is absent"
            continue
        try:
            arr.blocks[coords]
        except Exception as err:  # noqa: BLE001 - any decoding failure is damage
            return f"chunk {chunk_name(coords)} does not decode: {reason(err)}"
    return None
