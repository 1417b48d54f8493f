"""Items and readers shared by the export tests."""

import numpy as np

from medgen_cli.meta import LPS_TO_RAS, ImageMeta, IntensityMapping
from tests.conftest import sphere_phantom

CT_WINDOW = IntensityMapping(method="window", unit="HU", in_low=-1000, in_high=1000, out_low=-1, out_high=1, clip=True)


def rotation(a: float, b: float, c: float) -> np.ndarray:
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.7, 0.9, 2.5), origin=(30.0, -12.5, 7.0), angles=(0.4, -0.25, 0.15)) -> np.ndarray:
    """Right-handed, oblique, anisotropic (in-plane too, so a swapped PixelSpacing would show)."""
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ct_item(spatial_dims: int, affine=None):
    """(stored array, meta, physical HU values) of a CT phantom, 2D (a slice) or 3D."""
    hu = sphere_phantom((10, 12, 6))
    hu = hu[:, :, 3] if spatial_dims == 2 else hu
    meta = ImageMeta(affine=oblique_affine() if affine is None else affine, modality="CT", subject="s01",
                     intensity=CT_WINDOW)
    stored = CT_WINDOW.to_stored(hu)
    return stored, meta, CT_WINDOW.to_physical(stored)


def sitk_affine(img) -> np.ndarray:
    """RAS affine of a (3D) SimpleITK image."""
    affine = np.eye(4)
    direction = np.asarray(img.GetDirection()).reshape(3, 3)
    affine[:3, :3] = direction * np.asarray(img.GetSpacing())[None, :]
    affine[:3, 3] = img.GetOrigin()
    return LPS_TO_RAS @ affine


def read_series(directory):
    import SimpleITK as sitk

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = reader.Execute()
    return img, sitk.GetArrayFromImage(img).transpose(2, 1, 0), files  # values in (i, j, k)


def values_at_item_voxels(item_shape, item_affine, back_values, back_affine) -> np.ndarray:
    """The values of a read-back image at the world position of every voxel of the item.

    Both images must share voxel centres (an export only swaps and reverses axes); the read-back
    index of each item voxel is checked to be an integer, so a geometry error fails here.
    """
    idx = np.indices(item_shape).reshape(len(item_shape), -1).astype(np.float64)
    if len(item_shape) == 2:
        idx = np.vstack([idx, np.zeros(idx.shape[1])])
    world = np.asarray(item_affine) @ np.vstack([idx, np.ones(idx.shape[1])])
    back = (np.linalg.inv(back_affine) @ world)[:3]
    rounded = np.rint(back)
    np.testing.assert_allclose(back, rounded, atol=1e-3, err_msg="voxel centres moved")
    values = np.asarray(back_values)
    values = values if values.ndim == 3 else values[:, :, None]
    return values[tuple(rounded.astype(int))].reshape(item_shape)
