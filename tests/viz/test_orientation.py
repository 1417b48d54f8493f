"""Display orientation from the affine: radiological convention, checked on PNG-like images."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen_cli.meta import LPS_TO_RAS, ImageMeta
from medgen_cli.viz import display_plane, display_slice, orthogonal_views, plane_axis
from medgen_cli.viz.images import CELL, DPI, HEADER
from medgen_cli.viz.orientation import OPPOSITE

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


NEAREST = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def edge_directions(view_of, affine, shape=(9, 8, 7)):
    """World directions (RAS) in which the displayed columns and rows run, found independently of
    the display code: each voxel's indices are displayed, then mapped through the affine."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), 0).astype(float)
    views = [view_of(index[c]) for c in range(3)]
    ijk = np.stack([v.image for v in views], -1)
    world = ijk @ np.asarray(affine)[:3, :3].T
    return views[0], world[0, -1] - world[0, 0], world[-1, 0] - world[0, 0]


@pytest.mark.parametrize("rot", [
    rotation(2, 20), rotation(2, 60), rotation(0, 35) @ rotation(2, -50), rotation(1, 70) @ rotation(0, 25),
    rotation(0, 80) @ rotation(1, 40) @ rotation(2, 10),
], ids=["axial-20", "axial-60", "tilted", "double", "strongly-oblique"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_oblique_edges_are_the_nearest_axis_of_the_real_direction(rot, axis):
    """Each edge letter is the world axis nearest to where the image really runs (it used to be the
    plane's convention, e.g. S/I on rows that run mostly toward L)."""
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    view, across, down = edge_directions(lambda a: display_slice(a, affine, axis), affine)
    left, right, top, bottom = view.edges
    for direction, start, end in ((across, left, right), (down, top, bottom)):
        u = direction / np.linalg.norm(direction)
        nearest = max(NEAREST, key=lambda k: u @ NEAREST[k])
        assert end == nearest and start == OPPOSITE[end], (view.plane, start, end, np.round(u, 2))


def test_axis_aligned_edges_keep_the_radiological_convention():
    for affine in (np.eye(4), LPS_IDENTITY):
        for axis, expected in ((2, ("R", "L", "A", "P")), (1, ("R", "L", "S", "I")), (0, ("A", "P", "S", "I"))):
            assert display_slice(np.zeros((5, 6, 7)), affine, axis).edges == expected
