"""TilePlan and TileAggregator: coverage, alignment, partition, blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medgen_cli.inference.tiling import TileAggregator, TilePlan, blend_ramp


@pytest.mark.parametrize("shape, unit, tile, halo", [
    ((48, 48, 48), (4, 4, 4), 16, 8),
    ((64, 40, 24), (4, 4, 2), (24, 16, 8), (4, 8, 2)),
    ((96, 80), (2, 2), 32, 6),
    ((20, 20, 20), (4, 4, 4), 64, 0),  # one tile
])
def test_plan_covers_aligns_and_partitions(shape, unit, tile, halo):
    plan = TilePlan.for_image(shape, unit, tile, halo)
    owner = np.zeros(shape, np.int32)
    covered = np.zeros(shape, bool)
    for t in plan:
        region, core = t.region(unit), t.core(unit)
        for sl, n, u in zip(region, shape, unit):  # aligned to the downsampling, inside the volume
            assert sl.start % u == 0 and sl.stop % u == 0 and 0 <= sl.start < sl.stop <= n
        for r, c in zip(region, core):  # the core sits inside the computed region
            assert r.start <= c.start < c.stop <= r.stop
        owner[core] += 1
        covered[region] = True
        inner = t.core_in_tile(unit)
        assert all(i.stop - i.start == c.stop - c.start for i, c in zip(inner, core))
    assert covered.all()
    assert (owner == 1).all(), "cores must partition the volume: every voxel in exactly one core"


def test_plan_halo_is_clipped_and_cores_balanced():
    plan = TilePlan((10,), 4, 2)
    assert [(t.core_start[0], t.core_stop[0]) for t in plan] == [(0, 3), (3, 7), (7, 10)]
    assert [(t.start[0], t.stop[0]) for t in plan] == [(0, 5), (1, 9), (5, 10)]


def test_plan_refuses_bad_sizes():
    with pytest.raises(ValueError, match=r"shape=\(50, 48\)"):
        TilePlan.for_image((50, 48), (4, 4), 16)
    with pytest.raises(ValueError, match="core"):
        TilePlan((8, 8), 0)
    with pytest.raises(ValueError, match="halo"):
        TilePlan((8, 8), 4, (1, 2, 3))


def test_blend_ramp_sums_to_one_across_a_boundary():
    for n in (2, 4, 8, 16):
        ramp = blend_ramp(n)
        assert np.allclose(ramp + ramp[::-1], 1.0)
        assert np.all(np.diff(ramp) > 0) and 0 < ramp[0] < 0.5 < ramp[-1] < 1


@pytest.mark.parametrize("blend", [0, 1, 2])
def test_aggregator_rebuilds_the_volume(blend):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(2, 3, 32, 32, 16)).astype(np.float32)
    plan = TilePlan((8, 8, 4), (4, 4, 2), 2)  # unit 4 per axis
    out = np.zeros_like(truth)
    agg = TileAggregator(out, plan, (4, 4, 4), blend=(blend, blend, min(blend, 1)))
    for t in plan:
        agg.add(t, truth[(Ellipsis, *t.region((4, 4, 4)))])
    assert np.allclose(out, truth, atol=1e-6)  # cropping and blending reproduce identical tiles exactly


def test_aggregator_blends_with_smooth_weights():
    plan = TilePlan((8,), 4, 2)
    out = np.zeros((1, 16), np.float32)
    agg = TileAggregator(out, plan, (2,), blend=2)
    for t in plan:  # tile k outputs the constant k
        agg.add(t, np.full((1, t.shape[0] * 2), float(t.index), np.float32))
    assert out[0, 0] == 0 and out[0, -1] == 1 and np.all(np.diff(out[0]) >= 0)
    assert 0 < out[0, 7] < 0.5 < out[0, 8] < 1  # a ramp across the boundary at voxel 8, not a step


def test_aggregator_refuses_blending_integers_and_wrong_shapes():
    plan = TilePlan((8,), 4, 2)
    with pytest.raises(ValueError, match="floating-point"):
        TileAggregator(np.zeros(16, np.int16), plan, (2,), blend=1)
    with pytest.raises(ValueError, match="exceeds"):
        TileAggregator(np.zeros(16, np.float32), plan, (2,), blend=3)
    agg = TileAggregator(np.zeros(16, np.float32), plan, (2,))
    with pytest.raises(ValueError, match="spatial shape"):
        agg.add(plan.tiles[0], np.zeros(5, np.float32))


def test_plan_2d_and_3d_tile_counts():
    for shape in itertools.product((1, 5, 9), repeat=2):
        plan = TilePlan(shape, 4, 1)
        assert len(plan) == np.prod([-(-s // 4) for s in shape])
