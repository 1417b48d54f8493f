"""The attribute table of a stack group: one JSON segment per written batch, column by column.

A segment names the ids of rows ``start .. start + len(ids)`` and their attributes; a column whose
value is the same for every row (modality, intensity mapping, spacing of one scan) is stored once,
others as a list, with the offsets of rows that lack the key. Values are what `Store.write` stores
as zarr attributes (numpy values become JSON numbers and lists). ``seq`` (nanoseconds at writing)
orders segments that name the same id: the latest wins.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Segment:
    """One written batch: rows ``start .. start + len(ids)`` of stack group ``group``."""

    group: str
    start: int
    seq: int
    ids: list[str]
    columns: dict[str, tuple[bool, Any, frozenset]]  # key -> (constant?, value or values, offsets without it)

    def attrs(self, k: int) -> dict[str, Any]:
        out = {}
        for key, (const, value, absent) in self.columns.items():
            if k not in absent:
                out[key] = value if const else value[k]
        return out

    def column(self, key: str, k: int, default: Any = None) -> Any:
        col = self.columns.get(key)
        if col is None or k in col[2]:
            return default
        return col[1] if col[0] else col[1][k]

    @staticmethod
    def encode(start: int, ids: list[str], attrs: list[dict[str, Any]]) -> bytes:
        """The segment's JSON; attribute values as `Store.write` stores them (numpy values as lists/numbers)."""
        keys = list(dict.fromkeys(k for a in attrs for k in a))
        columns = {}
        for key in keys:
            absent = [k for k, a in enumerate(attrs) if key not in a]
            values = [a.get(key) for a in attrs]
            if not absent and all(_same(v, values[0]) for v in values[1:]):
                columns[key] = {"c": values[0]}
            else:
                columns[key] = {"v": values, **({"absent": absent} if absent else {})}
        doc = {"start": start, "seq": time.time_ns(), "ids": ids, "columns": columns}
        return json.dumps(doc, default=json_default).encode()

    @classmethod
    def decode(cls, group: str, raw: bytes) -> "Segment":
        doc = json.loads(raw)
        ids = [str(i) for i in doc["ids"]]
        columns = {}
        for key, col in doc["columns"].items():
            if "c" in col:
                columns[key] = (True, col["c"], frozenset())
            elif len(col["v"]) != len(ids):
                raise ValueError(f"column {key!r} has {len(col['v'])} values for {len(ids)} ids")
            else:
                columns[key] = (False, col["v"], frozenset(col.get("absent", ())))
        return cls(group, int(doc["start"]), int(doc["seq"]), ids, columns)


def _same(a: Any, b: Any) -> bool:
    try:
        same = a == b
    except (ValueError, TypeError):  # numpy arrays compare element-wise
        return False
    return same if isinstance(same, bool) else False


def json_default(value: Any) -> Any:
    """numpy values and paths as JSON (what `medgen_cli.io.store_format.jsonable` makes of them)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
