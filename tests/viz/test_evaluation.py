"""Evaluation pictures: shared grey and error scales, the picked items, the mask overlay."""

from __future__ import annotations

import matplotlib.image
import numpy as np

from medgen_cli.meta import ImageMeta, IntensityMapping
from medgen_cli.viz import evaluation as ve

WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)
IDENTITY = IntensityMapping(method="identity", unit="a.u.")


def test_grey_and_error_scales():
    a, b = np.array([[0.2, 0.5]]), np.array([[-0.3, 0.9]])
    assert ve.grey_limits(WINDOW, [a, b]) == (-1, 1)  # a clipped mapping: its stored window
    assert ve.grey_limits(IDENTITY, [a, b]) == (-0.3, 0.9)  # else the joint range
    assert ve.grey_limits(IDENTITY, [np.zeros((2, 2))]) == (0.0, 1.0)  # constant: a unit-wide scale
    assert ve.error_limit([(a, b), (b, b)]) == 0.5
    assert ve.error_limit([(a, a)]) == 1.0  # all exact


def test_pick_is_even_and_deterministic():
    ids = [f"i{k}" for k in range(10)]
    assert ve.pick(ids, 3) == ["i0", "i4", "i9"] == ve.pick(ids, 3)
    assert ve.pick(ids, 0) == [] and ve.pick([], 4) == [] and ve.pick(ids[:2], 5) == ["i0", "i1"]


def test_pair_pictures_of_a_volume(tmp_path):
    meta = ImageMeta(affine=np.diag([1.0, 1.0, 2.0, 1.0]), intensity=WINDOW)
    ref = np.random.default_rng(0).uniform(-1, 1, (12, 12, 12)).astype(np.float32)
    paths = ve.pair_pictures(tmp_path, "v", ref, ref * 0.5, meta, ("target", "sample"), (-1, 1), 1.0)
    assert {p.name for p in paths} == {"v_views_target.png", "v_strip_target.png", "v_views_sample.png",
                                       "v_strip_sample.png", "v_mip.png", "v_error.png"}
    assert all(matplotlib.image.imread(p).shape[0] > 10 for p in paths)


def test_mask_overlay(tmp_path):
    meta = ImageMeta(intensity=WINDOW)
    img = np.linspace(-1, 1, 256, dtype=np.float32).reshape(16, 16)
    labels = (img > 0).astype(np.int16)
    assert ve.mask_overlay(tmp_path / "none.png", [], [], [0, 1], WINDOW) is None
    path = ve.mask_overlay(tmp_path / "m.png", [[(img, labels, meta), None]], ["s0"], [0, 1], WINDOW)
    assert path.is_file() and matplotlib.image.imread(path).ndim == 3
