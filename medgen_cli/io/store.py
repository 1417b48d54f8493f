"""The item store: a zarr v3 group holding one chunked, compressed array per item.

Layout of an artefact's store ``<artefact>/<name>.zarr`` (``main`` for the primary store, the
derived name otherwise: ``drr``, ``lowdose``, ``downsample2``; ``samples`` for samples)::

    <name>.zarr/                 group attrs: {"medgen_store": 1, "name": ...}
      items/<id>                 array; attrs = ImageMeta.to_attrs() + split, complete, ...

An item is written with ``complete: false`` and flagged ``complete: true`` only after its data, so
an interrupted run never leaves an item that reads as valid and a re-run rewrites it. Any fsspec
URL zarr understands (``s3://bucket/prep/main.zarr``) works wherever a local path does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .meta import ImageMeta, IntensityMapping

log = logging.getLogger(__name__)

STORE_FORMAT = 1
DTYPES = {"float16": np.float16, "float32": np.float32, "int16": np.int16}


def store_path(artefact: Path | str, name: str = "main") -> str:
    """Where store ``name`` of an artefact lives (works for local paths and URLs)."""
    return f"{str(artefact).rstrip('/')}/{name}.zarr"


def default_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """64^3 chunks for volumes (fast random patch reads), whole images up to 512^2 for 2D."""
    edge = 64 if len(shape) >= 3 else 512
    return tuple(max(1, min(edge, s)) for s in shape)


def compressor(name: str, level: int) -> tuple[BloscCodec, ...]:
    if name == "none":
        return ()
    return (BloscCodec(cname=name, clevel=level, shuffle="bitshuffle" if name == "zstd" else "shuffle"),)


def as_stored_dtype(array: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "int16":
        info = np.iinfo(np.int16)
        return np.clip(np.rint(array), info.min, info.max).astype(np.int16)
    if dtype == "float16":
        finite = np.abs(array[np.isfinite(array)])
        if finite.size and finite.max() > 65504:
            raise ValueError(f"values up to {finite.max():g} overflow float16; normalise intensities or use store.dtype float32")
    return array.astype(DTYPES[dtype])


class Store:
    """A group of items with their geometry and intensity metadata.

    Use ``Store.open(path)`` to read and ``Store.create(path)`` to write.
    """

    def __init__(self, group: zarr.Group, path: str):
        attrs = dict(group.attrs)
        if attrs.get("medgen_store") is None:
            raise ValueError(f"{path} is a zarr group but not a medgen store (no 'medgen_store' attribute).")
        if int(attrs["medgen_store"]) > STORE_FORMAT:
            raise ValueError(f"{path} has store format {attrs['medgen_store']}, newer than this medgen reads; upgrade medgen.")
        self.group = group
        self.path = path
        self._items = group.require_group("items") if not group.read_only else group["items"]

    @classmethod
    def open(cls, path: Path | str, mode: str = "r", storage_options: dict | None = None) -> "Store":
        path = str(path)
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3, storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise ValueError(f"{path} is not a zarr store.") from None
        return cls(group, path)

    @classmethod
    def create(cls, path: Path | str, name: str = "main", storage_options: dict | None = None, **attrs: Any) -> "Store":
        """Open ``path`` for writing, creating the group when new (existing items are kept)."""
        path = str(path)
        group = zarr.open_group(path, mode="a", zarr_format=3, storage_options=storage_options)
        if "medgen_store" not in group.attrs:
            group.attrs.update({"medgen_store": STORE_FORMAT, "name": name, **attrs})
        group.require_group("items")
        return cls(group, path)

    # ------------------------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def ids(self, split: str | None = None, complete_only: bool = True) -> list[str]:
        """Item ids in sorted order, optionally of one split."""
        out = []
        for name in sorted(self._items.array_keys()):
            attrs = self.item_attrs(name)
            if complete_only and not attrs.get("complete", False):
                continue
            if split is not None and attrs.get("split") != split:
                continue
            out.append(name)
        return out

    def __contains__(self, item_id: str) -> bool:
        return item_id in set(self._items.array_keys())

    def array(self, item_id: str) -> zarr.Array:
        return self._items[item_id]

    def item_attrs(self, item_id: str) -> dict[str, Any]:
        return dict(self._items[item_id].attrs)

    def is_complete(self, item_id: str) -> bool:
        return item_id in self and bool(self.item_attrs(item_id).get("complete", False))

    def meta(self, item_id: str) -> ImageMeta:
        attrs = {k: v for k, v in self.item_attrs(item_id).items() if k not in ("complete",)}
        return ImageMeta.from_attrs(attrs)

    def read(self, item_id: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
        """Item values (or a region of them) as float32."""
        arr = self._items[item_id]
        return np.asarray(arr[region] if region is not None else arr[...], dtype=np.float32)

    def read_item(self, item_id: str) -> tuple[np.ndarray, ImageMeta]:
        return self.read(item_id), self.meta(item_id)

    def items(self, split: str | None = None) -> Iterator[tuple[str, np.ndarray, ImageMeta]]:
        for item_id in self.ids(split):
            yield item_id, self.read(item_id), self.meta(item_id)

    def subjects(self, split: str | None = None) -> dict[str, list[str]]:
        """subject -> item ids (sorted), for pairing stores by subject."""
        out: dict[str, list[str]] = {}
        for item_id in self.ids(split):
            out.setdefault(self.item_attrs(item_id).get("subject", ""), []).append(item_id)
        return out

    # ------------------------------------------------------------------------------------ writing
    def write(self, item_id: str, array: np.ndarray, meta: ImageMeta, *, dtype: str = "float16",
              chunks: tuple[int, ...] | None = None, codec: str = "zstd", level: int = 3, **attrs: Any) -> None:
        """Write one item atomically: data first, then ``complete: true``."""
        if "/" in item_id or not item_id:
            raise ValueError(f"item id {item_id!r} must be non-empty and must not contain '/'")
        data = as_stored_dtype(np.asarray(array), dtype)
        chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape)) if chunks and len(chunks) == data.ndim \
            else default_chunks(data.shape)
        item_attrs = {**meta.to_attrs(), **attrs, "complete": False}
        arr = self._items.create_array(
            item_id, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressor(codec, level),
            fill_value=0, attributes=_jsonable(item_attrs), overwrite=True,
        )
        arr[...] = data
        arr.attrs.update({"complete": True})

    def set_attrs(self, item_id: str, **attrs: Any) -> None:
        self._items[item_id].attrs.update(_jsonable(attrs))

    # ------------------------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """What `medgen inspect` shows: items per split, shapes, dtypes, spacing range, sizes."""
        splits: dict[str, int] = {}
        shapes: dict[str, int] = {}
        dtypes, modalities, subjects, mappings = set(), set(), set(), {}
        spacing_min, spacing_max = None, None
        raw = stored = 0
        incomplete = 0
        for name in sorted(self._items.array_keys()):
            arr = self._items[name]
            attrs = dict(arr.attrs)
            if not attrs.get("complete", False):
                incomplete += 1
                continue
            splits[attrs.get("split", "")] = splits.get(attrs.get("split", ""), 0) + 1
            key = "x".join(str(s) for s in arr.shape)
            shapes[key] = shapes.get(key, 0) + 1
            dtypes.add(str(arr.dtype))
            modalities.add(attrs.get("modality", "OT"))
            subjects.add(attrs.get("subject", ""))
            text = IntensityMapping.from_dict(attrs.get("intensity")).describe()
            mappings[text] = mappings.get(text, 0) + 1
            sp = np.asarray(attrs.get("spacing", [1, 1, 1]), dtype=float)[: arr.ndim]
            spacing_min = sp if spacing_min is None else np.minimum(spacing_min, sp)
            spacing_max = sp if spacing_max is None else np.maximum(spacing_max, sp)
            raw += arr.nbytes
            stored += arr.nbytes_stored()
        return {
            "name": self.attrs.get("name", ""),
            "items": sum(splits.values()),
            "incomplete_items": incomplete,
            "subjects": len(subjects),
            "splits": dict(sorted(splits.items())),
            "shapes": shapes,
            "dtypes": sorted(dtypes),
            "modalities": sorted(modalities),
            "intensity": mappings,
            "spacing_min": None if spacing_min is None else [round(float(v), 4) for v in spacing_min],
            "spacing_max": None if spacing_max is None else [round(float(v), 4) for v in spacing_max],
            "bytes_raw": int(raw),
            "bytes_stored": int(stored),
            "compression_ratio": round(raw / stored, 2) if stored else None,
        }


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types (zarr attributes are JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
