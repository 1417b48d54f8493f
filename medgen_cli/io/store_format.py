"""The on-disk format of an item store: format versions, codecs, chunking, stored dtypes and attributes.

What `medgen_cli.io.store.Store` writes and checks when it opens a store; the layout itself is described
in `medgen_cli.io.store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from zarr.codecs import BloscCodec, Crc32cCodec

from ..meta import ImageMeta
from .stacked import StackWriter

STORE_FORMAT = 2  # the newest format this medgen reads; 2 adds stack groups (a store without any stays 1)
ITEM_FORMAT = 1  # what a new store is created as
DTYPES = {"float16": np.float16, "float32": np.float32, "int16": np.int16}
# every array medgen hands out writes every chunk, even through ``store.array(id)[...] = values``
KEEP_CHUNKS = {"write_empty_chunks": True}


def default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """64^3 chunks for volumes (fast random patch reads), whole images up to 512^2 for 2D."""
    edge = 64 if len(shape) >= 3 else 512
    return tuple(max(1, min(edge, s)) for s in shape)


def compressor(name: str, level: int) -> tuple[BloscCodec | Crc32cCodec, ...]:
    """The bytes codecs of an item: Blosc (unless ``none``), then a CRC-32C checksum of the stored bytes, so
    a flipped byte is an error on read rather than silently wrong values."""
    if name == "none":
        return (Crc32cCodec(),)
    return (BloscCodec(cname=name, clevel=level, shuffle="bitshuffle" if name == "zstd" else "shuffle"), Crc32cCodec())


def as_stored_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "int16":
        info = np.iinfo(np.int16)
        return np.clip(np.rint(array), info.min, info.max).astype(np.int16)
    if dtype == "float16":
        finite = np.abs(array[np.isfinite(array)])
        if finite.size and finite.max() > 65504:
            raise ValueError(f"values up to {finite.max():g} overflow float16; normalise intensities or use store.dtype float32")
    return array.astype(DTYPES[dtype])


def check_item_id(item_id: str) -> None:
    """An item id names one array under ``items/``: non-empty, no ``/``, not hidden, not zarr's metadata file."""
    if "/" in item_id or not item_id or item_id.startswith(".") or item_id == "zarr.json":
        raise ValueError(f"item id {item_id!r} must be non-empty, must not contain '/' and must not start with '.'")


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types (zarr attributes are JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


class ItemStackWriter:
    """`StackWriter` taking items as `Store.write` does: (id, array, meta, dtype, **attrs)."""

    def __init__(self, writer: StackWriter):
        self.writer = writer

    def add(self, item_id: str, array: np.ndarray, meta: ImageMeta, *, dtype: str = "float16", **attrs: Any) -> None:
        if "/" in item_id or not item_id or item_id.startswith("."):  # a stacked id is a row, never a key
            raise ValueError(f"item id {item_id!r} must be non-empty, must not contain '/' and must not start with '.'")
        data = as_stored_dtype(np.asarray(array), dtype)
        self.writer.add(item_id, data, {**meta.to_attrs(), **attrs})  # the segment stores them as JSON

    def flush(self) -> None:
        self.writer.flush()
