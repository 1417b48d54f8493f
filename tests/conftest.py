"""Shared fixtures: real images from the data cache (skipped when absent) and tiny phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

DATA = Path(os.environ.get("MEDGEN_DATA", Path.home() / ".cache" / "medgen" / "data"))


@pytest.fixture(scope="session")
def real_data():
    """Path of a real image from the cache that examples/fetch_data.py fills (`make data`)."""

    def get(name: str) -> Path:
        path = DATA / name
        if not path.exists():
            pytest.skip(f"real image {name} is not in {DATA}; run `make data` (examples/fetch_data.py) to fetch it")
        return path

    return get


@pytest.fixture(scope="session")
def nibabel_data() -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data"


def sphere_phantom(shape=(24, 24, 16), radius=0.35, inside=400.0, outside=-1000.0, seed=0) -> np.ndarray:
    """A CT-like phantom in HU: a bright ellipsoid in air with a little noise."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-0.5, 0.5, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    arr = np.where(r < radius, inside, outside).astype(np.float32)
    return arr + rng.normal(0, 5, size=shape).astype(np.float32)


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path
