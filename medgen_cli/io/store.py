"""The item store: a zarr v3 group holding one chunked, compressed array per item.

Layout of an artefact's store ``<artefact>/<name>.zarr`` (``main`` for the primary store, the
derived name otherwise: ``drr``, ``lowdose``, ``downsample2``; ``samples`` for samples)::

    <name>.zarr/                 group attrs: {"medgen_store": 1 or 2, "name": ...}
      items/<id>                 array; attrs = ImageMeta.to_attrs() + split, complete, all_chunks, ...
      stacks/<shape>-<dtype>-<tag>/   format 2: items of one shape as rows of one sharded array, their
                                 attributes in columns (`medgen_cli.io.stacked`; `write_many`)

An item is written with ``complete: false`` and flagged ``complete: true`` only after its data, so
an interrupted run never leaves an item that reads as valid and a re-run rewrites it. Any fsspec
URL zarr understands (``s3://bucket/prep/main.zarr``) works wherever a local path does.
The format (versions, codecs, chunking, stored dtypes) is in `medgen_cli.io.store_format`, what
`Store.summary` reports in `medgen_cli.io.store_summary`.

Cost: the items are listed once per ``Store`` object (one key listing plus one metadata read per
item, concurrently); ``ids``, ``is_complete``, ``item_attrs`` and ``in`` then answer from memory,
and ``write`` keeps that index up to date, so resuming over N items costs O(N), not O(N^2).

Damage (an absent or undecodable chunk, unreadable metadata) raises `DamagedStore` naming the store, the
item and the chunk (`medgen_cli.io.store_damage`); `Store.check` decodes every chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import zarr
from zarr.core.sync import sync

from ..meta import ImageMeta
from .stacked import Stacks, StackWriter
from .store_damage import (WRITERS, DamagedStore, blank_chunks, check_item, chunk_name, damaged, first_bad_chunk,
                           missing_chunks, reason)
from .store_summary import summarise
from .store_format import (ITEM_FORMAT, KEEP_CHUNKS, STORE_FORMAT, ItemStackWriter, as_stored_dtype, check_item_id,
                           compressor, default_chunks, jsonable)

__all__ = ["WRITERS", "DamagedStore", "Store", "as_stored_dtype", "store_path"]  # WRITERS, DamagedStore and
# as_stored_dtype live in store_damage / store_format and are imported from here by the steps

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5  # Store.create retries when another process creates the same store at the same moment


def store_path(artefact: Path | str, name: str = "main") -> str:
    """Where store ``name`` of an artefact lives (works for local paths and URLs)."""
    return f"{str(artefact).rstrip('/')}/{name}.zarr"


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
        try:
            self._items = group.require_group("items") if not group.read_only else group["items"]
        except Exception as err:  # noqa: BLE001 - zarr raises KeyError, JSON and type errors alike
            raise damaged(path, f"its items group (items/zarr.json) is missing or damaged ({reason(err)})") from None
        self._index: dict[str, zarr.Array] | None = None  # item id -> array, after the one listing
        self._damaged: dict[str, str] = {}  # item id -> why its metadata is unreadable
        self._stacks = Stacks(group)  # stacked items (format 2), indexed with the items

    @classmethod
    def open(cls, path: Path | str, mode: str = "r", storage_options: dict | None = None) -> "Store":
        path = str(path)
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3, storage_options=storage_options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            if "://" not in path and (Path(path) / "items").is_dir():
                raise damaged(path, "the store's metadata (zarr.json) is missing") from None
            raise ValueError(f"{path} is not a zarr store.") from None
        except (ValueError, TypeError, KeyError) as err:  # unparsable zarr.json
            raise damaged(path, f"the store's metadata (zarr.json) is damaged ({reason(err)})") from None
        return cls(group, path)

    @classmethod
    def create(cls, path: Path | str, name: str = "main", storage_options: dict | None = None, **attrs: Any) -> "Store":
        """Open ``path`` for writing, creating the group when new (existing items are kept)."""
        path = str(path)
        for attempt in range(CREATE_ATTEMPTS):
            try:
                group = zarr.open_group(path, mode="a", zarr_format=3, storage_options=storage_options)
                if "medgen_store" not in group.attrs:
                    group.attrs.update({"medgen_store": ITEM_FORMAT, "name": name, **attrs})
                group.require_group("items")
                return cls(group, path)
            except zarr.errors.ContainsGroupError:  # another worker created it between our check and our write
                time.sleep(0.05 * (attempt + 1))
            except (ValueError, TypeError, KeyError) as err:
                raise DamagedStore(f"{path}: the store's metadata (zarr.json) is damaged ({reason(err)}); "
                                   "remove it (or pass --overwrite) and run again.") from None  # our own output
        raise DamagedStore(f"{path}: the store could not be opened for writing: other processes kept creating it "
                           "at the same time; run again.")

    # ------------------------------------------------------------------------------------ index
    def _scan(self) -> dict[str, zarr.Array]:
        """List the items once: one key listing, then every item's metadata (concurrently)."""
        if self._index is not None:
            return self._index
        group = self._items._async_group

        async def scan():
            names = [n async for n in group.store_path.store.list_dir(group.store_path.path)]
            names = sorted(n for n in names if n != "zarr.json" and not n.startswith("."))
            return names, await asyncio.gather(*(group.getitem(n) for n in names), return_exceptions=True)

        names, nodes = sync(scan())
        self._index, self._damaged = {}, {}
        for name, node in zip(names, nodes):
            if isinstance(node, zarr.AsyncArray):
                self._index[name] = zarr.Array(node.with_config(KEEP_CHUNKS))
            elif isinstance(node, KeyError) and str(node).strip("'\"") == name:
                self._damaged[name] = "its metadata (zarr.json) is missing"
            elif isinstance(node, Exception):
                self._damaged[name] = f"its metadata (zarr.json) is damaged ({reason(node)})"
            elif isinstance(node, BaseException):
                raise node
            # a group inside items/ is not an item
        self._stacks.load(KEEP_CHUNKS)
        if self._damaged and not self.group.read_only:  # a writer rewrites them as incomplete items
            log.warning("%s: %d item(s) with damaged metadata will be rewritten, e.g. %s", self.path,
                        len(self._damaged), next(iter(self._damaged)))
        return self._index

    def _raise_damaged(self) -> None:
        if self._damaged and self.group.read_only:
            name, why = next(iter(self._damaged.items()))
            more = f" (and {len(self._damaged) - 1} more damaged item(s))" if len(self._damaged) > 1 else ""
            raise damaged(self.path, why + more, name)

    def refresh(self) -> None:
        """Forget the index (another process changed the store)."""
        self._index, self._damaged = None, {}
        self._stacks = Stacks(self.group)

    # ------------------------------------------------------------------------------------ reading
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def ids(self, split: str | None = None, complete_only: bool = True) -> list[str]:
        """Item ids in sorted order, optionally of one split."""
        index = self._scan()
        self._raise_damaged()
        out = []
        stacked = self._stacks.locs
        for name, arr in index.items():
            attrs = arr.attrs
            if name in stacked or (complete_only and not attrs.get("complete", False)):
                continue
            if split is not None and attrs.get("split") != split:
                continue
            out.append(name)
        if stacked:  # a stacked id is complete by construction; it wins over an items/ array of the same id
            out.extend(i for i, loc in stacked.items() if split is None or loc.segment.column("split", loc.offset) == split)
            out.sort()
        return out

    def complete_ids(self) -> set[str]:
        """Ids of the complete items (one listing per Store; ``write`` keeps it current)."""
        return set(self.ids())

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._scan() or item_id in self._damaged or item_id in self._stacks.locs

    def array(self, item_id: str) -> zarr.Array:
        """The zarr array of an item (metadata only; read values with `read`, which checks them); for a
        stacked item a `StackedView` (shape, dtype, attrs, ndim, nbytes)."""
        if item_id in self._scan_stacks():
            return self._stacks.view(item_id)
        if self._index is not None:
            if item_id in self._index:
                return self._index[item_id]
            if item_id in self._damaged:
                raise damaged(self.path, self._damaged[item_id], item_id)
        try:
            return self._items[item_id].with_config(KEEP_CHUNKS)
        except Exception as err:  # noqa: BLE001 - an unparsable zarr.json raises JSON, key, type or value errors
            if isinstance(err, KeyError) and str(err).strip("'\"") == item_id:  # no zarr.json at all
                if not self._exists(f"{item_id}/c"):
                    raise KeyError(f"{self.path} has no item {item_id!r}") from None
                raise damaged(self.path, "its metadata (zarr.json) is missing", item_id) from None
            raise damaged(self.path, f"its metadata (zarr.json) is damaged ({reason(err)})", item_id) from None

    def _exists(self, key: str) -> bool:
        store, base = self._items.store_path.store, self._items.store_path.path

        async def any_key():
            async for _ in store.list_prefix(f"{base}/{key}/" if base else f"{key}/"):
                return True
            return False

        return sync(any_key())

    def _scan_stacks(self) -> dict:
        """Stacked item id -> location; a store of format 1 has none (and is not listed for them)."""
        if int(self.group.attrs.get("medgen_store", 1)) < 2:
            return {}
        self._scan()
        return self._stacks.locs

    def item_attrs(self, item_id: str) -> dict[str, Any]:
        if item_id in self._scan_stacks():
            return self._stacks.attrs(item_id)
        return dict(self.array(item_id).attrs)

    def attr_values(self, ids: list[str], key: str, default: Any = None) -> list[Any]:
        """One attribute of many items (from the columns of stacked items: no per-item dict)."""
        locs = self._scan_stacks()
        return [locs[i].segment.column(key, locs[i].offset, default) if i in locs
                else self.item_attrs(i).get(key, default) for i in ids]

    def is_complete(self, item_id: str) -> bool:
        """O(1) after the store's one listing."""
        if item_id in self._scan_stacks():
            return True
        arr = self._scan().get(item_id)
        return arr is not None and bool(arr.attrs.get("complete", False))

    def meta(self, item_id: str) -> ImageMeta:
        attrs = {k: v for k, v in self.item_attrs(item_id).items() if k not in ("complete", "all_chunks")}
        try:
            return ImageMeta.from_attrs(attrs)
        except (KeyError, ValueError, TypeError) as err:
            raise damaged(self.path, f"its geometry attributes are damaged ({reason(err)})", item_id) from None

    def read(self, item_id: str, region: tuple[slice, ...] | None = None, dtype: Any = np.float32) -> np.ndarray:
        """Item values (or a region of them) as ``dtype`` (float32; None keeps the stored type).

        A chunk that zarr found absent reads as the fill value (0), so only the chunks of the region
        that read as all zeros are looked up in the store (none, for most images).

        Raises:
            DamagedStore: a chunk of the region is absent (for items that record ``all_chunks``) or
                does not decode; the message names the store, the item and the chunk.
        """
        if item_id in self._scan_stacks():
            return self.read_many([item_id], dtype)[0] if region is None else self._read_stacked(item_id, region, dtype)
        arr = self.array(item_id)
        region = tuple(slice(None) for _ in arr.shape) if region is None else tuple(region)
        try:
            values = np.asarray(arr[region])
        except Exception as err:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ... on bad bytes
            bad = first_bad_chunk(arr)
            which = "a chunk" if bad is None else f"chunk {chunk_name(bad)}"
            raise damaged(self.path, f"{which} is missing or damaged ({reason(err)})", item_id) from None
        if arr.attrs.get("all_chunks") and all(isinstance(r, slice) and r.step in (None, 1) for r in region):
            missing = missing_chunks(arr, blank_chunks(arr, region, values))
            if missing:
                raise damaged(self.path, f"chunk {chunk_name(missing[0])} is missing or damaged (it is absent)", item_id)
        return values if dtype is None else values.astype(dtype, copy=False)

    def read_many(self, ids: list[str], dtype: Any = np.float32) -> list[np.ndarray]:
        """The values of several items; stacked items are read with one selection per stack group."""
        locs = self._scan_stacks()
        stacked = [i for i in ids if i in locs]
        try:
            got = self._stacks.read_rows(stacked) if stacked else {}
        except Exception as err:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ... on bad bytes
            for item_id in stacked:  # name the first item that does not read
                self._read_stacked(item_id, (), dtype)
            raise damaged(self.path, f"a shard is missing or damaged ({reason(err)})") from None
        out = [got[i] if i in got else self.read(i, dtype=None) for i in ids]
        return out if dtype is None else [v.astype(dtype, copy=False) for v in out]

    def _read_stacked(self, item_id: str, region: tuple, dtype: Any) -> np.ndarray:
        try:
            values = self._stacks.read_row(item_id, tuple(region))
        except LookupError as err:
            raise damaged(self.path, f"{err.args[0]} is missing or damaged (it is absent)", item_id) from None
        except Exception as err:  # noqa: BLE001
            raise damaged(self.path, f"its row is missing or damaged ({reason(err)})", item_id) from None
        return values if dtype is None else values.astype(dtype, copy=False)

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
        """Write one item atomically: data first (every chunk), then ``complete: true``."""
        check_item_id(item_id)
        data = as_stored_dtype(np.asarray(array), dtype)
        chunks = tuple(min(c, s) for c, s in zip(chunks, data.shape)) if chunks and len(chunks) == data.ndim \
            else default_chunks(data.shape)
        item_attrs = {**meta.to_attrs(), **attrs, "complete": False, "all_chunks": True}
        if self._index is not None:
            self._index.pop(item_id, None)
            self._damaged.pop(item_id, None)
        arr = self._items.create_array(
            item_id, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=compressor(codec, level),
            fill_value=0, attributes=jsonable(item_attrs), overwrite=True, config=KEEP_CHUNKS,
        )
        arr[...] = data
        arr.attrs.update({"complete": True})
        if self._index is not None:
            self._index[item_id] = arr

    def stack_writer(self, tag: str = "0", *, codec: str = "zstd", level: int = 3) -> "ItemStackWriter":
        """A buffered writer of stacked items (`write_many`): call ``add(id, array, meta, dtype=..., **attrs)``
        then ``flush()``; an item is complete (and listed) once the shard it is in was flushed."""
        self._scan()
        writer = StackWriter(self._stacks, tag, compressor(codec, level), KEEP_CHUNKS)
        return ItemStackWriter(writer)

    def write_many(self, items: list[tuple[str, np.ndarray, ImageMeta]], *, dtype: str = "float16", tag: str = "0",
                   codec: str = "zstd", level: int = 3, **attrs: Any) -> None:
        """Write items stacked by shape and dtype: one object per shard instead of two per item. Data
        first, then each batch's completion record, so an interrupted call leaves no item half written."""
        writer = self.stack_writer(tag, codec=codec, level=level)
        for item_id, array, meta in items:
            writer.add(item_id, array, meta, dtype=dtype, **attrs)
        writer.flush()

    def set_attrs(self, item_id: str, **attrs: Any) -> None:
        self.array(item_id).attrs.update(jsonable(attrs))

    # ------------------------------------------------------------------------------------ checking
    def check(self, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
        """Decode every chunk of every item: ``{"items", "chunks", "damaged": {id: reason}, "incomplete",
        "unverified"}``. ``unverified`` counts items written before ``all_chunks`` was recorded, whose
        absent chunks may be blank on purpose (they are decoded, not required)."""
        index = self._scan()
        bad = dict(self._damaged)
        report = {"items": len(index) + len(bad), "chunks": 0, "incomplete": 0, "unverified": 0}
        for n, (item_id, arr) in enumerate(index.items(), 1):
            if not arr.attrs.get("complete", False):
                report["incomplete"] += 1
            else:
                report["unverified"] += not arr.attrs.get("all_chunks")
                why = check_item(arr, report, require_all=bool(arr.attrs.get("all_chunks")))
                if why:
                    bad[item_id] = why
            if progress is not None:
                progress(n, len(index), item_id)
        rows, stack_bad = self._stacks.check()  # stacked items: one decode per shard
        report["items"] += len(self._stacks.locs) + len(self._stacks.damaged)
        report["chunks"] += rows
        bad.update(stack_bad)
        report["damaged"] = dict(sorted(bad.items()))
        return report

    # ------------------------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """What `medgen inspect` shows: items per split, shapes, dtypes, spacing range, sizes (`summarise`)."""
        index = self._scan()
        self._raise_damaged()
        stacked = [self.array(i) for i in self._stacks.locs]
        arrays = [a for i, a in index.items() if i not in self._stacks.locs] + stacked
        return summarise(self.attrs.get("name", ""), arrays, self._stacks.stored_bytes() if stacked else 0)
