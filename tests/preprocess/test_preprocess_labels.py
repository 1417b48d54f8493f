"""Label maps: nearest-neighbour resampling onto a grid against SimpleITK's own, integer checks, coverage."""

from __future__ import annotations

import numpy as np
import pytest

from medgen_cli.meta import LPS_TO_RAS, ImageMeta, affine_from_geometry
from medgen_cli.preprocess import labels as lab
from medgen_cli.preprocess import spatial

VALUES = np.array([0, 1, 2, 7, -3], dtype=np.int16)


def random_labels(shape, seed=0) -> np.ndarray:
    """Blocky labels (2-voxel blocks), so a misplaced voxel shows, with five distinct values."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(VALUES, size=tuple((n + 1) // 2 for n in shape))
    out = coarse
    for axis in range(len(shape)):
        out = np.repeat(out, 2, axis=axis)
    return np.ascontiguousarray(out[tuple(slice(0, n) for n in shape)])


def sitk_nearest(labels: np.ndarray, meta: ImageMeta, shape, target: ImageMeta) -> np.ndarray:
    """The reference: SimpleITK's Resample with sitkNearestNeighbor onto the target grid (LPS geometry)."""
    import SimpleITK as sitk

    def geometry(image, affine):
        lps = LPS_TO_RAS @ affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing([float(s) for s in spacing])
        image.SetOrigin([float(o) for o in lps[:3, 3]])
        image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
        return image

    src = geometry(sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0))), meta.affine)
    ref = geometry(sitk.Image([int(n) for n in shape], sitk.sitkInt16), target.affine)
    out = sitk.Resample(src, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def centred(spacing, direction, shape, centre) -> ImageMeta:
    """A grid of ``shape`` whose middle voxel sits at world point ``centre``."""
    affine = affine_from_geometry(spacing, (0.0, 0.0, 0.0), direction)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return ImageMeta(affine=affine)


def _rotation(degrees: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


FLIPPED = np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])  # axis order and signs differ from the target's
CASES = {  # direction of the label grid, and whether the map to the target grid is per-axis (separable)
    "same orientation": (np.eye(3), True),
    "permuted and flipped": (FLIPPED, True),
    "oblique": (_rotation(17.0) @ FLIPPED, False),
}


@pytest.mark.parametrize("direction,separable", list(CASES.values()), ids=list(CASES))
def test_nearest_resampling_matches_simpleitk(direction, separable):
    labels = random_labels((19, 17, 11), seed=1)
    meta = centred((1.1, 0.9, 2.3), direction, labels.shape, (1.3, -0.7, 2.1))
    # a target grid of other spacing, shape and centre, partly outside the labels (those points get 0)
    shape = (31, 21, 17)
    target = centred((0.73, 1.37, 1.61), np.eye(3), shape, (0.0, 0.0, 0.0))
    assert (lab._axis_aligned(lab.index_map(meta, target)) is not None) == separable  # both code paths are tested
    out, inside = lab.resample_labels(labels, meta, shape, target)
    ref = sitk_nearest(labels, meta, shape, target)
    assert out.shape == shape and out.dtype == np.int16
    np.testing.assert_array_equal(out, ref)
    assert 0 < inside < np.prod(shape) and (out != 0).sum() <= inside
    assert set(np.unique(out)) <= set(VALUES.tolist())  # labels kept exactly, nothing new


def test_same_grid_is_identity_and_integer_shift_is_exact():
    labels = random_labels((9, 8, 7), seed=2)
    meta = ImageMeta(affine=affine_from_geometry((1.5, 1.5, 3.0), (10.0, -5.0, 2.0), FLIPPED))
    out, inside = lab.resample_labels(labels, meta, labels.shape, meta)
    np.testing.assert_array_equal(out, labels)
    assert inside == labels.size
    shifted = meta.with_affine(meta.affine @ np.array([[1, 0, 0, 2], [0, 1, 0, -1], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    out, _ = lab.resample_labels(labels, meta, labels.shape, shifted)
    np.testing.assert_array_equal(out[:-2, 1:], labels[2:, :-1])  # voxel (i, j) of the shifted grid is (i+2, j-1)
    assert (out[-2:] == 0).all() and (out[:, 0] == 0).all()  # outside the labels: background


def test_agrees_with_the_images_own_nearest_resampling():
    """A mask on its image's grid lands where the image's nearest-neighbour resampling puts the same voxels."""
    labels = random_labels((24, 20, 10), seed=3)
    meta = ImageMeta(affine=affine_from_geometry((0.8, 0.8, 2.5), (0.0, 0.0, 0.0), np.eye(3)))
    moved, moved_meta = spatial.resample(labels, meta, (1.3, 1.1, 1.7), order="nearest")
    out, _ = lab.resample_labels(labels, meta, moved.shape, moved_meta)
    np.testing.assert_array_equal(out, moved)


def test_a_2d_grid_inside_a_volume_reads_its_plane():
    labels = random_labels((10, 12, 6), seed=4)
    meta = ImageMeta(affine=affine_from_geometry((1.0, 1.0, 4.0), (0.0, 0.0, 0.0), np.eye(3)))
    plane = meta.with_affine(meta.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1.0]]))
    out, inside = lab.resample_labels(labels, meta, (10, 12), plane)
    np.testing.assert_array_equal(out, labels[:, :, 3])
    assert inside == 120


def test_as_labels_accepts_integer_floats_and_refuses_the_rest():
    np.testing.assert_array_equal(lab.as_labels(np.array([0.0, 2.0, -1.0], np.float32), "m.nrrd"), [0, 2, -1])
    assert lab.as_labels(np.array([0.0, 1.0], np.float32), "m.nrrd").dtype == np.int16
    with pytest.raises(lab.LabelError, match=r"^m\.nrrd: the mask holds non-integer values \(e\.g\. 0\.5 in 1 voxel"):
        lab.as_labels(np.array([0.0, 0.5, 1.0], np.float32), "m.nrrd")
    with pytest.raises(lab.LabelError, match=r"span 0\.\.40000.*renumber"):
        lab.as_labels(np.array([0.0, 40000.0], np.float32), "m.nrrd")
    assert lab.label_counts(np.array([[0, 3], [3, 3]])) == {0: 1, 3: 3}


def test_coverage_of_disjoint_half_and_full_overlap():
    meta = ImageMeta(affine=affine_from_geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)))
    shape = (20, 10, 10)
    assert lab.coverage(shape, meta, shape, meta) == 1.0
    half = meta.with_affine(meta.affine @ np.array([[1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    assert lab.coverage(shape, half, shape, meta) == pytest.approx(0.5, abs=0.05)
    far = meta.with_affine(meta.affine @ np.array([[1, 0, 0, 500], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    assert lab.coverage(shape, far, shape, meta) == 0.0
    assert "x 500..519" in lab.describe_extent(shape, far)
