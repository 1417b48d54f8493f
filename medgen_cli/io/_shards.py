"""Whole-shard encoding and row reads of a stack group's ``data`` array, in zarr v3's own format.

zarr-python decodes and encodes every inner chunk of a shard through its asynchronous codec
pipeline, about 0.3 ms per chunk here, which caps a stack of one-row chunks at ~3,000 items/s.
The codecs themselves take ~10 us per 64^2 row, so a stack's shards are encoded here in one call
(bytes -> blosc -> crc32c per row, then the shard index with its crc32c, at the end: the
``sharding_indexed`` layout of the zarr v3 spec) and written as one object, and local reads take
the rows they need from each shard with one file read per row. The shards stay ordinary zarr:
zarr reads them (the tests check it), and remote stores, checks and error reports go through zarr.
Shards are written once and never changed, so a process caches their indexes.
"""

from __future__ import annotations

import os
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.storage import LocalStore

EMPTY = np.uint64(2**64 - 1)  # an inner chunk that was never written
SHUFFLE = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}


def _with_crc(data: bytes) -> bytes:
    return data + np.uint32(google_crc32c.value(data)).tobytes()


def _check_crc(data: bytes) -> bytes:
    body = data[:-4]
    if np.frombuffer(data[-4:], "<u4")[0] != google_crc32c.value(body):
        raise ValueError("Stored and computed checksum do not match")
    return body


class ShardCodec:
    """Encode whole shards / decode rows of one ``data`` array, or None when its codecs are not the
    ones medgen writes (then zarr does the work).

    Args:
        arr: the stack group's ``data`` array.
    """

    def __init__(self, arr: zarr.Array):
        sharding = arr.metadata.codecs[0]
        inner = list(sharding.codecs) if isinstance(sharding, ShardingCodec) else []
        if not (len(inner) in (2, 3) and isinstance(inner[0], BytesCodec) and isinstance(inner[-1], Crc32cCodec)
                and (len(inner) == 2 or isinstance(inner[1], BloscCodec))
                and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
                and sharding.index_location.value == "end" and tuple(sharding.chunk_shape[1:]) == arr.shape[1:]
                and sharding.chunk_shape[0] == 1):
            raise ValueError("not a medgen stack layout")
        blosc = inner[1] if len(inner) == 3 else None
        self.blosc = None if blosc is None else Blosc(cname=blosc.cname.value, clevel=blosc.clevel,
                                                       shuffle=SHUFFLE[blosc.shuffle.value], blocksize=0)
        self.per = int(arr.shards[0])
        self.shape, self.dtype = tuple(arr.shape[1:]), np.dtype(arr.dtype).newbyteorder("<")
        self.index_bytes = 16 * self.per + 4

    def encode(self, rows: np.ndarray) -> bytes:
        """One shard holding ``rows`` (at most ``per`` of them) from its first row on."""
        parts, index = [], np.full((self.per, 2), EMPTY, dtype="<u8")
        offset = 0
        for k, row in enumerate(np.ascontiguousarray(rows, dtype=self.dtype)):
            raw = row.tobytes()
            part = _with_crc(self.blosc.encode(row) if self.blosc is not None else raw)
            parts.append(part)
            index[k] = (offset, len(part))
            offset += len(part)
        parts.append(_with_crc(index.tobytes()))
        return b"".join(parts)

    def decode(self, part: bytes) -> np.ndarray:
        body = _check_crc(part)
        raw = self.blosc.decode(body) if self.blosc is not None else body
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape)


class LocalRows:
    """Row reads from the shard files of a local store, with each shard's index read once.

    Args:
        arr: the stack group's ``data`` array (in a `LocalStore`).
        codec: its `ShardCodec`.
    """

    def __init__(self, arr: zarr.Array, codec: ShardCodec):
        self.codec = codec
        root = arr.store_path.store.root
        self.base = os.path.join(str(root), *arr.store_path.path.split("/"))
        self.key = lambda shard: arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
        self.indexes: dict[int, np.ndarray] = {}

    @staticmethod
    def usable(arr: zarr.Array) -> bool:
        return isinstance(arr.store_path.store, LocalStore)

    def read(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[k]`` with row ``rows[k]``. Raises LookupError("shard N") for an absent shard,
        ValueError or RuntimeError for bytes that do not decode."""
        per = self.codec.per
        order = np.argsort(rows, kind="stable")
        fd, open_shard = -1, -1
        try:
            for k in order:
                shard, inner = divmod(int(rows[k]), per)
                if shard != open_shard:
                    if fd >= 0:
                        os.close(fd)
                    try:
                        fd = os.open(os.path.join(self.base, self.key(shard)), os.O_RDONLY)
                    except FileNotFoundError:
                        raise LookupError(f"shard {shard}") from None
                    open_shard = shard
                index = self._index(fd, shard)
                offset, length = index[inner]
                if offset == EMPTY:
                    raise ValueError(f"row {int(rows[k])} is absent from its shard")
                out[k] = self.codec.decode(os.pread(fd, int(length), int(offset)))
        finally:
            if fd >= 0:
                os.close(fd)

    def _index(self, fd: int, shard: int) -> np.ndarray:
        index = self.indexes.get(shard)
        if index is None:
            size = os.fstat(fd).st_size
            if size < self.codec.index_bytes:
                raise ValueError("the shard is shorter than its index")
            raw = _check_crc(os.pread(fd, self.codec.index_bytes, size - self.codec.index_bytes))
            index = np.frombuffer(raw, "<u8").reshape(self.codec.per, 2)
            self.indexes[shard] = index
        return index


def make_codec(arr: zarr.Array) -> Any:
    try:
        return ShardCodec(arr)
    except (ValueError, AttributeError, IndexError, TypeError):
        return None
