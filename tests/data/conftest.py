"""Tiny synthetic stores for the data tests."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.io.store import Store

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


@pytest.fixture
def make_store(tmp_path):
    """make_store(name, {id: (array, subject, split, extra_attrs)}, mapping=WINDOW) -> Store."""

    def make(name: str, items: dict, mapping: IntensityMapping = WINDOW) -> Store:
        store = Store.create(tmp_path / f"{name}.zarr", name=name)
        for item_id, (arr, subject, split, *extra) in items.items():
            meta = ImageMeta(subject=subject, intensity=mapping)
            store.write(item_id, np.asarray(arr, dtype=np.float32), meta, dtype="float32", split=split,
                        **(extra[0] if extra else {}))
        return Store.open(store.path)

    return make


@pytest.fixture
def ramp():
    """ramp(shape, offset=0.0): distinct values everywhere, so any slice identifies its position."""

    def make(shape, offset=0.0) -> np.ndarray:
        return (np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) / 1000.0 + offset).astype(np.float32)

    return make
