"""Display orientation from the affine: radiological convention, checked on PNG-like images."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen_cli.io.meta import LPS_TO_RAS, ImageMeta
from medgen_cli.viz import display_plane, display_slice, orthogonal_views, plane_axis
from medgen_cli.viz.images import CELL, DPI, HEADER

LPS_IDENTITY = LPS_TO_RAS @ np.eye(4)  # a PNG read through ITK: i toward L, j toward P


def picture(rows=30, cols=40) -> np.ndarray:
    """A picture as a PNG holds it (rows down, columns across), bright in its top-left corner."""
    pic = np.zeros((rows, cols))
    pic[: rows // 2, : cols // 2] = 1.0
    pic[0, -1] = 0.5  # top-right marker
    return pic


def test_png_like_image_shows_as_the_original_picture():
    pic = picture()
    arr = pic.T  # medgen voxel order (i = column, j = row), as the reader stores a PNG
    view = display_slice(arr, ImageMeta(affine=LPS_IDENTITY))
    assert view.plane == "axial"
    np.testing.assert_array_equal(view.image, pic)
    assert view.edges == ("R", "L", "A", "P")  # patient's right on the image's left, anterior up


def test_png_like_image_renders_upright(tmp_path):
    pic = picture(40, 40)
    path = orthogonal_views(tmp_path / "png.png", pic.T, ImageMeta(affine=LPS_IDENTITY))
    png = mpimg.imread(path)[..., :3].mean(-1)
    pad = 0.04

    def at(fx, fy):  # a point of the panel, as fractions from its top-left corner
        x = (pad + fx * (CELL - 2 * pad)) * DPI
        y = (HEADER + pad + fy * (CELL - 2 * pad)) * DPI
        return png[int(y), int(x)]

    assert at(0.25, 0.25) > 0.9  # top-left bright
    assert at(0.75, 0.25) < 0.1 and at(0.25, 0.75) < 0.1 and at(0.75, 0.75) < 0.1


def test_ras_identity_is_flipped_to_radiological_view():
    # NIfTI-style RAS identity: i toward R, j toward A. Voxel (n-1, m-1) is the patient's
    # right-anterior corner, which the radiological view puts at the top-left.
    arr = np.zeros((6, 5))
    arr[-1, -1] = 1.0
    view = display_slice(arr, np.eye(4))
    assert view.image.shape == (5, 6)
    assert view.image[0, 0] == 1.0
    np.testing.assert_array_equal(view.image, arr[::-1, ::-1].T)


def test_coronal_acquisition_is_recognised_and_oriented():
    # i toward L, j toward I, k toward A (a coronal DICOM series), spacing 0.5, 0.5, 3 mm
    affine = np.zeros((4, 4))
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[3, 3] = (-0.5, 0, 0), (0, 0, -0.5), (0, 3, 0), 1
    vol = np.random.default_rng(0).random((8, 7, 4))
    assert plane_axis(affine, "coronal") == 2 and plane_axis(affine, "axial") == 1
    cor = display_slice(vol, affine, "coronal", 1)
    assert cor.plane == "coronal"
    np.testing.assert_array_equal(cor.image, vol[:, :, 1].T)  # columns toward L, rows toward I
    axial = display_slice(vol, affine, "axial", 3)
    np.testing.assert_array_equal(axial.image, vol[:, 3, ::-1].T)  # rows toward P: k (toward A) flipped
    assert axial.aspect == pytest.approx(3 / 0.5)
    sag = display_slice(vol, affine, "sagittal", 2)
    # columns toward P (k runs A: flipped), rows toward I (j)
    np.testing.assert_array_equal(sag.image, vol[2, :, ::-1])
    mip = display_plane(vol.max(axis=1), affine, 1)
    np.testing.assert_array_equal(mip.image, vol.max(axis=1)[:, ::-1].T)


def test_bad_axis_and_index_raise():
    vol = np.zeros((4, 4, 4))
    with pytest.raises(ValueError, match="axis"):
        display_slice(vol, np.eye(4), 3)
    with pytest.raises(ValueError, match="outside"):
        display_slice(vol, np.eye(4), 0, 9)
    with pytest.raises(ValueError, match="plane"):
        plane_axis(np.eye(4), "oblique")
