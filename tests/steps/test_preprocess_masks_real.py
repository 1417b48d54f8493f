"""Real CT with its real label map (pyradiomics lung1): the mask lands on each item's grid, in HU that make sense.

``lung1_label.nrrd`` labels a lung nodule (837 voxels over 3 slices, label 1), not the whole lung:
inside it the CT reads soft tissue (mean -64 HU on the original grid: a solid nodule with some
partial volume of lung), and a thin shell around it reads air-filled lung (below -500 HU). A mask
shifted by a few millimetres would mix the two, so both figures check the mask's position; the
stored mask of every item also equals SimpleITK's nearest-neighbour resampling of the label file
onto that item's grid, voxel for voxel.
"""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from medgen_cli.cli import app
from medgen_cli.meta import LPS_TO_RAS
from medgen_cli.io.store import Store, store_path

runner = CliRunner()
RAW_HU = ["--set", "intensity.normalize=none", "--dtype", "int16", "--modality", "CT"]  # stored values are HU
MODES = {
    "volume": ["--spacing", "1.5,1.5,5"],
    "slices": ["--mode", "slices", "--fit", "256,256", "--set", "mode.min_foreground=0"],
}


def reference(image_path, label_path) -> tuple[set[int], float, float]:
    """Independently of medgen: the label values, the mean HU over the labelled voxels on the original grid and
    their volume in mm^3 (SimpleITK reads both files and puts the label on the image's grid by nearest neighbour)."""
    import SimpleITK as sitk

    image, label = sitk.ReadImage(str(image_path)), sitk.ReadImage(str(label_path))
    label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    hu, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(label)
    return set(np.unique(lab).tolist()), float(hu[lab > 0].mean()), float((lab > 0).sum() * np.prod(image.GetSpacing()))


def sitk_labels_on(label_path, shape, meta) -> np.ndarray:
    """SimpleITK's nearest-neighbour resampling of the label file onto an item's grid (its affine, in LPS)."""
    import SimpleITK as sitk

    lps = LPS_TO_RAS @ meta.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ref = sitk.Image([int(n) for n in (*shape, 1)[:3]], sitk.sitkInt16)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin(lps[:3, 3].tolist())
    ref.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    out = sitk.Resample(sitk.ReadImage(str(label_path)), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt16)
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0).reshape(shape)


def _in_plane_shell(inside: np.ndarray, mm: float, spacing) -> np.ndarray:
    """Voxels within ``mm`` of the labelled ones in the first two axes (the slices are 5 mm apart), outside them."""
    reach = [max(1, round(mm / s)) for s in spacing[:2]]
    grown = inside.copy()
    for di in range(-reach[0], reach[0] + 1):
        for dj in range(-reach[1], reach[1] + 1):
            grown |= np.roll(np.roll(inside, di, axis=0), dj, axis=1)
    return grown & ~inside


@pytest.mark.realdata
@pytest.mark.parametrize("mode", list(MODES))
def test_real_lung_ct_with_its_label(tmp_path, real_data, mode):
    image, label = real_data("lung1_image.nrrd"), real_data("lung1_label.nrrd")
    res = runner.invoke(app, ["preprocess", str(image), "--out", str(tmp_path / "prep"), *RAW_HU, *MODES[mode],
                              "--set", "masks.source=suffix:_label"])
    assert res.exit_code == 0, res.output
    main, masks = Store.open(store_path(tmp_path / "prep")), Store.open(store_path(tmp_path / "prep", "masks"))
    assert main.ids() == masks.ids() and len(main.ids()) == (1 if mode == "volume" else 48)
    values, ref_mean, ref_volume = reference(image, label)
    hu_sum, voxels, volume, seen, shell = 0.0, 0, 0.0, set(), []
    for item in main.ids():
        arr, meta = main.read(item, dtype=None), main.meta(item)
        labels = masks.read(item, dtype=None)
        assert labels.shape == arr.shape and labels.dtype == np.int16
        np.testing.assert_allclose(masks.meta(item).affine, meta.affine, atol=1e-6)
        np.testing.assert_array_equal(labels, sitk_labels_on(label, labels.shape, meta))
        seen |= set(np.unique(labels).tolist())
        hu_sum += float(arr[labels > 0].astype(np.float64).sum())
        voxels += int((labels > 0).sum())
        volume += int((labels > 0).sum()) * float(np.prod(meta.spacing))
        ring = _in_plane_shell(labels > 0, mm=5.0, spacing=meta.spacing)
        shell.append(arr[ring].astype(np.float64))
    assert seen <= values and len(seen) == len(values)  # the labels kept exactly, none lost, none new
    mean = hu_sum / voxels
    assert -300 < mean < 100  # a soft-tissue nodule, in the stored (raw HU) units
    assert abs(mean - ref_mean) < 30  # as on the original grid (resampling blurs a small nodule's edge into the lung)
    assert np.concatenate(shell).mean() < -500  # surrounded by air-filled lung
    assert volume == pytest.approx(ref_volume, rel=0.05)  # nearest neighbour keeps the labelled volume
