"""The stacked layout of a store: many items of one shape and dtype as the rows of one sharded array.

A store of format 2 (group attribute ``medgen_store: 2``) may hold, besides ``items/<id>`` arrays
(volumes, and anything written one item at a time), stack groups::

    stacks/<shape>-<dtype>-<tag>/        group attrs: {"shape", "dtype", "rows_per_shard"}
        data                            (rows, *shape) array; chunks of one row inside shards of
                                        ``rows_per_shard`` rows (zarr v3 sharding: one object per shard);
                                        grown a shard at a time by its one writer
        segments/<first row>.json       per write batch: the ids of its rows and their attributes,
                                        column by column (a column equal for every row is stored once)

A batch is written data first (whole shards, `medgen_cli.io._shards`), then its segment in one
atomic object write (a rename on local disks, one PUT on object stores): the segment is the
completion record, so the items of an interrupted batch are not complete and are written again on
resume, into new rows. Every batch starts at a new shard after every shard present, so no object is
ever written twice. An id written again later (a resumed run) is found in the segment with the
highest ``seq``.

One writer owns a stack group (its ``tag``: "0" by default, the shard ``IofN`` in preprocess), so
writers never share an object. Each chunk carries a CRC-32C checksum and the shard index its own,
so damage fails to decode instead of reading as noise; a shard that segments name but the store
lacks is reported as absent. The store is listed once (everything under ``stacks/``) when opened.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ._segments import Segment
from ._shards import LocalRows, make_codec

STACKS = "stacks"
LAYOUT_FORMAT = 2  # the store format that introduced stack groups
SHARD_BYTES = 8 * 2**20  # raw bytes per shard (one object): 1024 items of 64^2 float16
MAX_ROWS_PER_SHARD = 4096
FLUSH_SECONDS = 60.0  # a writer flushes what it holds at least this often (a partly filled shard)


def rows_per_shard(shape: tuple[int, ...], dtype: Any) -> int:
    return int(max(1, min(MAX_ROWS_PER_SHARD, SHARD_BYTES // (math.prod(shape) * np.dtype(dtype).itemsize))))


def group_name(shape: tuple[int, ...], dtype: Any, tag: str) -> str:
    return f"{'x'.join(str(s) for s in shape)}-{np.dtype(dtype).name}-{tag}"


@dataclass(frozen=True)
class Loc:
    """Where a stacked item lives: its segment and its offset there (row = segment.start + offset)."""

    segment: Segment
    offset: int

    @property
    def row(self) -> int:
        return self.segment.start + self.offset


class StackedView:
    """What ``Store.array`` gives for a stacked item: shape, dtype and (built when asked) attributes."""

    def __init__(self, stacks: "Stacks", item_id: str):
        arr = stacks.arrays[stacks.locs[item_id].segment.group]
        self._stacks, self._id = stacks, item_id
        self.shape, self.dtype = tuple(arr.shape[1:]), arr.dtype
        self.ndim = len(self.shape)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize

    @property
    def attrs(self) -> dict[str, Any]:
        return self._stacks.attrs(self._id)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Stored values (read-only: a stacked row is written once; use `Store.read` for checked reads)."""
        return self._stacks.read_row(self._id)[key]


class Stacks:
    """The stack groups of one store: their index (id -> row), reads, writes and checks.

    Args:
        group: the store's root zarr group.
    """

    def __init__(self, group: zarr.Group):
        self.root = group
        self.arrays: dict[str, zarr.Array] = {}
        self._fast: dict[str, Any] = {}  # group -> LocalRows (local stores in medgen's codecs), or None
        self.locs: dict[str, Loc] = {}
        self.damaged: dict[str, str] = {}  # segment key -> why it is unreadable
        self.segments: dict[str, list[Segment]] = defaultdict(list)
        self.present: dict[str, set[int]] = defaultdict(set)

    # ----------------------------------------------------------------------------------- index
    def _key(self, *parts: str) -> str:
        base = self.root.store_path.path
        return "/".join(p for p in (base, STACKS, *parts) if p)

    def load(self, config: dict[str, Any]) -> None:
        """List every stack group and read all their segments (concurrently); O(segments)."""
        store = self.root.store_path.store

        async def listing():  # one listing of everything under stacks/: groups, segments, shards
            prefix = self._key() + "/"
            rel = sorted([k[len(prefix):] if k.startswith(prefix) else k async for k in store.list_prefix(prefix)])
            parts = [r.split("/") for r in rel]
            names = sorted({p[0] for p in parts if len(p) == 2 and p[1] == "zarr.json"})
            for p in parts:
                if len(p) > 3 and p[1:3] == ["data", "c"] and p[3].isdigit():
                    self.present[p[0]].add(int(p[3]))
            keys = [self._key(*p) for p in parts if len(p) == 3 and p[1] == "segments" and p[2].endswith(".json")]
            raws = await asyncio.gather(*(store.get(k, default_buffer_prototype()) for k in keys))
            return names, keys, raws

        self.locs, self.damaged, self.segments = {}, {}, defaultdict(list)
        self.present = defaultdict(set)  # group -> shards in the store
        if int(self.root.attrs.get("medgen_store", 1)) < LAYOUT_FORMAT:
            return  # a store of format 1 has no stacks: no listing
        names, keys, raws = sync(listing())
        for name in names:
            try:
                self.arrays[name] = self.root[f"{STACKS}/{name}/data"].with_config(config)
            except Exception as err:  # noqa: BLE001 - zarr raises key, JSON, type and value errors alike
                self.damaged[self._key(name, "data")] = f"its metadata is missing or damaged ({type(err).__name__})"
        for key, raw in zip(keys, raws):
            if key.split("/")[-3] not in self.arrays:
                continue  # the items of a stack whose array is unreadable are not listed (check names the stack)
            try:
                seg = Segment.decode(key.split("/")[-3], raw.to_bytes())
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                self.damaged[key] = f"its segment is unreadable ({type(err).__name__})"
                continue
            self.add(seg)

    def add(self, seg: Segment) -> None:
        self.segments[seg.group].append(seg)
        for k, item_id in enumerate(seg.ids):
            old = self.locs.get(item_id)
            if old is None or old.segment.seq <= seg.seq:
                self.locs[item_id] = Loc(seg, k)

    def view(self, item_id: str) -> StackedView:
        return StackedView(self, item_id)

    def attrs(self, item_id: str) -> dict[str, Any]:
        loc = self.locs[item_id]
        return {**loc.segment.attrs(loc.offset), "complete": True, "all_chunks": True}

    # ----------------------------------------------------------------------------------- reading
    def read_row(self, item_id: str, region: tuple = ()) -> np.ndarray:
        return self.read_rows([item_id])[item_id][tuple(region)]

    def _local(self, name: str) -> LocalRows | None:
        if name not in self._fast:
            arr, codec = self.arrays[name], make_codec(self.arrays[name])
            self._fast[name] = LocalRows(arr, codec) if codec is not None and LocalRows.usable(arr) else None
        return self._fast[name]

    def read_rows(self, ids: list[str]) -> dict[str, np.ndarray]:
        """Values of several items: per stack group and shard, one read of the rows it needs."""
        by_group: dict[str, list[int]] = defaultdict(list)
        for item_id in ids:
            loc = self.locs[item_id]
            by_group[loc.segment.group].append(loc.row)
        got: dict[tuple[str, int], np.ndarray] = {}
        for name, rows in by_group.items():
            arr = self.arrays[name]
            rows = np.unique(rows)
            local = self._local(name)
            if local is not None:
                values = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
                try:
                    local.read(rows, values)
                except LookupError as err:
                    raise LookupError(f"{err.args[0]} of stack {name}") from None
                got.update({(name, int(r)): v for r, v in zip(rows, values)})
                continue
            values = np.asarray(arr.get_orthogonal_selection((rows,)))
            blank = ~np.ascontiguousarray(values).view(f"u{values.itemsize}").reshape(len(rows), -1).any(axis=1)
            if blank.any():
                self.require_shards(name, rows[blank].tolist())
            got.update({(name, int(r)): v for r, v in zip(rows, values)})
        return {i: got[(self.locs[i].segment.group, self.locs[i].row)] for i in ids}

    def shard_key(self, name: str, shard: int) -> str:
        arr = self.arrays[name]
        return f"{arr.store_path.path}/{arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))}"

    def require_shards(self, name: str, rows: Iterable[int]) -> None:
        """Raise ``LookupError(shard)`` for the first shard of ``rows`` absent from the store."""
        per = self.arrays[name].shards[0]
        shards = sorted({r // per for r in rows})
        store = self.root.store_path.store

        async def exist():
            return await asyncio.gather(*(store.exists(self.shard_key(name, s)) for s in shards))

        for shard, ok in zip(shards, sync(exist())):
            if not ok:
                raise LookupError(f"shard {shard} of stack {name}")

    # ----------------------------------------------------------------------------------- checking
    def check(self) -> tuple[int, dict[str, str]]:
        """Decode every row of every live item, shard by shard: (rows decoded, {id or segment key: why})."""
        bad = dict(self.damaged)
        rows = 0
        by_shard: dict[tuple[str, int], list[str]] = defaultdict(list)
        for item_id, loc in self.locs.items():
            by_shard[(loc.segment.group, loc.row // self.arrays[loc.segment.group].shards[0])].append(item_id)
        for (name, shard), ids in sorted(by_shard.items()):
            rows += len(ids)
            try:
                self.read_rows(ids)
                continue
            except LookupError:
                bad.update({i: f"shard {shard} of stack {name} is absent" for i in ids})
                continue
            except Exception:  # noqa: BLE001 - any decoding failure is damage; find the rows
                pass
            for i in ids:
                try:
                    self.read_rows([i])
                except Exception as err:  # noqa: BLE001
                    bad[i] = f"row {self.locs[i].row} of stack {name} (shard {shard}) does not decode: {_short(err)}"
            if not any(i in bad for i in ids):
                bad.update({i: f"shard {shard} of stack {name} does not decode" for i in ids})
        return rows, bad

    def stored_bytes(self) -> int:
        store = self.root.store_path.store
        keys = sorted({self.shard_key(loc.segment.group, loc.row // self.arrays[loc.segment.group].shards[0])
                       for loc in self.locs.values()})

        async def sizes():
            return await asyncio.gather(*(store.getsize(k) for k in keys), return_exceptions=True)

        return int(sum(s for s in sync(sizes()) if isinstance(s, int)))


def _require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """``parent.require_group(name)``, also when another writer (``preprocess --shard``) creates it meanwhile."""
    for attempt in range(5):
        try:
            return parent.require_group(name)
        except zarr.errors.ContainsGroupError:
            time.sleep(0.05 * (attempt + 1))
    return parent[name]


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return "checksum mismatch" if "checksum do not match" in text else f"{type(err).__name__}: {text[:100]}"


class StackWriter:
    """Buffers items per stack group and writes them a shard at a time (data, then the segment).

    Args:
        stacks: the store's `Stacks` (its index is kept current).
        tag: this writer's name in the stack group names (one writer per tag at a time).
        codecs: the bytes codecs of each row (`store.compressor`).
        on_write: called with each written `Segment` after its completion record.
    """

    def __init__(self, stacks: Stacks, tag: str, codecs: tuple, config: dict[str, Any], on_write=None):
        if not tag or "/" in tag:
            raise ValueError(f"a stack writer tag must be non-empty without '/', got {tag!r}")
        self.stacks, self.tag, self.codecs, self.config, self.on_write = stacks, tag, codecs, config, on_write
        self.pending: dict[str, list[tuple[str, np.ndarray, dict[str, Any]]]] = defaultdict(list)
        self.next_row: dict[str, int] = {}
        self.last_flush = time.monotonic()

    def add(self, item_id: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
        name = group_name(data.shape, data.dtype, self.tag)
        self.pending[name].append((item_id, data, attrs))
        if len(self.pending[name]) >= rows_per_shard(data.shape, data.dtype):
            self._flush_group(name)
        elif time.monotonic() - self.last_flush > FLUSH_SECONDS:  # bound the work a killed run loses
            self.flush()

    def flush(self) -> None:
        for name in list(self.pending):
            self._flush_group(name)
        self.last_flush = time.monotonic()

    def _array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> zarr.Array:
        if name not in self.stacks.arrays:
            root = self.stacks.root
            if int(root.attrs.get("medgen_store", 1)) < LAYOUT_FORMAT:
                root.attrs.update({"medgen_store": LAYOUT_FORMAT})
            per = rows_per_shard(shape, dtype)
            grp = _require_group(_require_group(root, STACKS), name)
            grp.attrs.update({"shape": list(shape), "dtype": np.dtype(dtype).name, "rows_per_shard": per})
            self.stacks.arrays[name] = grp.create_array(
                "data", shape=(per, *shape), dtype=dtype, chunks=(1, *shape), shards=(per, *shape),
                compressors=self.codecs, fill_value=0, overwrite=True, config=self.config)
        return self.stacks.arrays[name]

    def _first_free_row(self, name: str, arr: zarr.Array) -> int:
        """The first row after every segment and every shard present: no object is ever written twice
        (the rows of an interrupted batch, or of an unreadable segment, are left as they are)."""
        per = arr.shards[0]
        end = max((s.start + len(s.ids) for s in self.stacks.segments.get(name, [])), default=0)
        return max(-(-end // per), max(self.stacks.present.get(name, ()), default=-1) + 1) * per

    def _write_rows(self, name: str, arr: zarr.Array, start: int, rows: np.ndarray) -> None:
        """Rows ``start ..`` (a shard boundary), one whole shard object at a time (see `_shards`)."""
        codec = make_codec(arr)
        if codec is None:  # not medgen's codecs: let zarr write it
            arr[start:start + len(rows)] = rows
            return
        per, store = codec.per, arr.store_path.store
        parts = [(self.stacks.shard_key(name, (start + k) // per), codec.encode(rows[k:k + per]))
                 for k in range(0, len(rows), per)]

        async def put():
            await asyncio.gather(*(store.set(k, default_buffer_prototype().buffer.from_bytes(b)) for k, b in parts))

        sync(put())

    def _flush_group(self, name: str) -> None:
        batch = self.pending.pop(name, [])
        if not batch:
            return
        first = batch[0][1]
        arr = self._array(name, first.shape, first.dtype)
        if name not in self.next_row:
            self.next_row[name] = self._first_free_row(name, arr)
        start = self.next_row[name]
        per = arr.shards[0]
        if start + len(batch) > arr.shape[0]:  # grow by whole shards (zarr's indexing costs O(shards))
            arr.resize((-(-(start + len(batch)) // per) * per, *arr.shape[1:]))
        self._write_rows(name, arr, start, np.stack([d for _, d, _ in batch]))
        ids = [i for i, _, _ in batch]
        raw = Segment.encode(start, ids, [a for _, _, a in batch])
        key = self.stacks._key(name, "segments", f"{start:012d}.json")
        sync(self.stacks.root.store_path.store.set(key, default_buffer_prototype().buffer.from_bytes(raw)))
        self.stacks.present[name].update(range(start // per, -(-(start + len(batch)) // per)))
        self.next_row[name] = -(-(start + len(batch)) // per) * per  # the next batch starts a new shard
        seg = Segment.decode(name, raw)
        self.stacks.add(seg)
        if self.on_write is not None:
            self.on_write(seg)
