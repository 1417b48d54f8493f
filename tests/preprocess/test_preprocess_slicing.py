"""Slices and slice sequences keep their place in the world."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.preprocess import slicing as L


@pytest.fixture
def volume(make_meta, oblique_direction):
    arr = np.random.default_rng(0).uniform(1, 2, size=(6, 7, 8)).astype(np.float32)
    meta = make_meta((0.6, 0.9, 2.5), (4.0, -7.0, 11.0), oblique_direction, subject="s1")
    return arr, meta


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_move_axis_last(axis, volume, to_world):
    arr, meta = volume
    out, m = L.move_axis_last(arr, meta, axis)
    assert out.shape[2] == arr.shape[axis]
    rest = [a for a in range(3) if a != axis]
    idx = np.array([1, 2, 3])
    src = np.empty(3, int)
    src[rest], src[axis] = idx[:2], idx[2]
    np.testing.assert_allclose(to_world(m.affine, idx), to_world(meta.affine, src))
    assert out[tuple(idx)] == arr[tuple(src)]


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_map_to_volume_world(axis, volume, to_world):
    arr, meta = volume
    slices = L.extract_slices(arr, meta, axis=axis, which="all", min_foreground=0.0)
    assert len(slices) == arr.shape[axis]
    ij = np.stack(np.meshgrid(*[np.arange(n) for n in slices[0][0].shape], indexing="ij"), -1)
    for s, m in slices:
        k = m.attrs["slice_index"]
        assert m.attrs["slice_axis"] == axis and m.subject == "s1" and s.ndim == 2
        vol_idx = np.insert(ij, axis, k, axis=-1)  # volume index with k at the slicing axis
        slice_idx = np.concatenate([ij, np.zeros(ij.shape[:-1] + (1,))], -1)
        np.testing.assert_allclose(to_world(m.affine, slice_idx), to_world(meta.affine, vol_idx), atol=1e-9)
        np.testing.assert_array_equal(s, np.take(arr, k, axis=axis))
        np.testing.assert_allclose(m.spacing[2], meta.spacing[axis])  # third column: thickness


def test_empty_slices_dropped_and_center(volume):
    arr, meta = volume
    arr = arr.copy()
    arr[..., :4] = 0.0  # background
    arr[0, 0, 3] = 1.0  # 1/42 of slice 3 is foreground: below 5 %
    kept = [m.attrs["slice_index"] for _, m in L.extract_slices(arr, meta)]
    assert kept == [4, 5, 6, 7]
    assert [m.attrs["slice_index"] for _, m in L.extract_slices(arr, meta, which="center")] == [4]
    assert L.extract_slices(arr, meta, which=1) == []
    assert [m.attrs["slice_index"] for _, m in L.extract_slices(arr, meta, which=[-1, 5])] == [7, 5]
    with pytest.raises(ValueError, match="which"):
        L.extract_slices(arr, meta, which="middle")


def test_sequences(volume, to_world):
    arr, meta = volume
    seqs = L.extract_sequences(arr, meta, axis=0, length=3, stride=2)
    assert [m.attrs["slice_start"] for _, m in seqs] == [0, 2]  # 6 slices: windows 0-2, 2-4
    for s, m in seqs:
        k = m.attrs["slice_start"]
        assert s.shape == (7, 8, 3) and m.attrs["length"] == 3
        np.testing.assert_array_equal(s, np.moveaxis(arr[k:k + 3], 0, -1))
        np.testing.assert_allclose(to_world(m.affine, [2, 5, 1]), to_world(meta.affine, [k + 1, 2, 5]), atol=1e-9)
    assert len(L.extract_sequences(arr, meta, length=8)) == 1
    assert L.extract_sequences(arr, meta, length=9) == []
    with pytest.raises(ValueError, match="stride"):
        L.extract_sequences(arr, meta, length=2, stride=0)


def test_sequences_at_given_starts_match_the_windows(volume):
    arr, meta = volume
    windows = L.extract_sequences(arr, meta, axis=1, length=3, stride=2)
    again = L.extract_sequences(arr * 2, meta, axis=1, length=3, starts=[m.attrs["slice_start"] for _, m in windows][::-1])
    for (a, m), (b, n) in zip(windows[::-1], again):
        np.testing.assert_array_equal(b, 2 * a)
        np.testing.assert_allclose(n.affine, m.affine)
        assert n.attrs == m.attrs
    with pytest.raises(ValueError, match="starts must be in"):
        L.extract_sequences(arr, meta, axis=1, length=3, starts=[5])
