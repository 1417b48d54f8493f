"""Probe (receptive field, memory, attention) and tile choice under a memory budget."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from medgen_cli.inference.budget import PEAK_FACTOR, available_bytes, choose_core, probe
from medgen_cli.inference.tiling import TilePlan
from medgen_cli.nn.attention import SpatialSelfAttention


def test_probe_receptive_field_of_a_conv_stack():
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Conv3d(4, 4, 3, padding=1),
                          nn.Conv3d(4, 4, 5, padding=2), nn.GroupNorm(2, 4))
    cost = probe(model, model, [torch.zeros(1, 1, 2, 2, 2)], (2, 2, 2))
    assert cost.halo == (4, 4, 4)  # 1 + 1 + 2 voxels
    assert cost.norm_halos == ((1, 1, 1), (4, 4, 4))  # what each norm layer's input has seen
    # the largest layer: 4 channels in + 4 out on 8 voxels of 4 bytes, plus the input, per unit (8 units)
    assert cost.bytes_per_unit == pytest.approx((PEAK_FACTOR * (4 + 4) * 8 * 4 + 8 * 4) / 8)
    assert cost.attention == ()


def test_probe_counts_resolution_and_attention():
    # a stride-2 conv (reach 1 input voxel at 2 voxels per unit), a transposed conv (no reach),
    # then a 3x3 conv at 1 voxel per unit: 0.5 + 0 + 1 -> 2 units
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), SpatialSelfAttention(2, 4, 1, "group", 2),
                          nn.ConvTranspose2d(4, 4, 2, stride=2), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.Conv2d(4, 1, 3, padding=1))
    cost = probe(model, model, [torch.zeros(1, 1, 4, 4)], (2, 2))
    assert cost.halo == (2, 2)
    assert cost.attention == ("1",)


def test_choose_core_fits_the_budget_with_least_overlap():
    grid, halo, per_unit = (20, 12, 8), (3, 3, 2), 1.0
    budget = 12 * 10 * 8
    core = choose_core(grid, (1, 1, 1), halo, per_unit, budget)
    plan = TilePlan(grid, core, halo)
    assert per_unit * math.prod(plan.max_tile_shape) <= budget
    best = math.inf  # brute force over per-axis tile counts
    for counts in itertools.product(*(range(1, g + 1) for g in grid)):
        p = TilePlan(grid, [-(-g // n) for g, n in zip(grid, counts)], halo)
        if math.prod(p.max_tile_shape) <= budget:
            best = min(best, sum(math.prod(t.shape) for t in p))
    assert sum(math.prod(t.shape) for t in plan) == best


def test_choose_core_whole_grid_or_a_clear_error():
    assert choose_core((8, 8), (4, 4), (2, 2), 10.0, 10.0 * 64) == (8, 8)
    with pytest.raises(ValueError, match=r"too small.*tiling\.max_gib"):
        choose_core((8, 8), (4, 4), (2, 2), 10.0, 10.0)


def test_available_memory_is_positive():
    assert available_bytes("cpu") > 0
