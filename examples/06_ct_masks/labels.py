#!/usr/bin/env python3
"""Multi-label maps of the pyradiomics lung CTs, for example 06 (masks -> images).

pyradiomics' ``lung1_label``/``lung2_label`` mark one small nodule each (a few hundred voxels), not the
lungs, so this builds a label map per CT from its HU values with SimpleITK (no learning, no download):

    0  outside the body (air around the patient, the table)
    1  soft tissue: the body minus the labels below
    2  lung / air inside the body: HU < -400 inside the body, connected pieces of at least 2 ml
    3  bone: HU > 250 inside the body
    4  the pyradiomics nodule label (drawn last, over the others)

The body is the largest connected piece above -500 HU with its holes filled slice by slice (the
lungs reach the top of the volume through the trachea, so a 3D fill would leave them out). The
images are copied unchanged beside their maps as ``NAME_image.nrrd`` and ``NAME_labels.nrrd``, so
``medgen preprocess --masks suffix:_labels`` pairs them.

    python labels.py DATA_DIR OUT_DIR        # writes OUT_DIR/lung{1,2}_{image,labels}.nrrd
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BODY_HU, LUNG_HU, BONE_HU = -500, -400, 250
MIN_LUNG_ML = 2.0
SOFT, LUNG, BONE, NODULE = 1, 2, 3, 4


def _largest(mask: sitk.Image) -> sitk.Image:
    """The largest connected component of a binary image."""
    return sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True) == 1


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled in every axial slice (numpy order is (k, j, i): slices are the first axis)."""
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        out[k] = sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(mask[k].astype(np.uint8))))
    return out.astype(bool)


def label_map(image: sitk.Image, nodule: sitk.Image) -> sitk.Image:
    """The five-label map of one CT (see the module docstring), on the image's grid."""
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    body = _fill_slices(sitk.GetArrayFromImage(_largest(image > BODY_HU)).astype(bool))
    air = sitk.GetImageFromArray((body & (hu < LUNG_HU)).astype(np.uint8))
    air.CopyInformation(image)
    pieces = sitk.RelabelComponent(sitk.ConnectedComponent(air),
                                   minimumObjectSize=int(MIN_LUNG_ML * 1000 / np.prod(image.GetSpacing())))
    labels = np.where(body, SOFT, 0).astype(np.int16)
    labels[sitk.GetArrayFromImage(pieces) > 0] = LUNG
    labels[body & (hu > BONE_HU)] = BONE
    on_grid = sitk.Resample(nodule, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    labels[sitk.GetArrayFromImage(on_grid) > 0] = NODULE
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    return out


def main(data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("lung1", "lung2"):
        image = sitk.ReadImage(str(data / f"{name}_image.nrrd"))
        labels = label_map(image, sitk.ReadImage(str(data / f"{name}_label.nrrd")))
        shutil.copyfile(data / f"{name}_image.nrrd", out / f"{name}_image.nrrd")
        sitk.WriteImage(labels, str(out / f"{name}_labels.nrrd"), useCompression=True)
        values, counts = np.unique(sitk.GetArrayFromImage(labels), return_counts=True)
        print(f"{name}: " + ", ".join(f"label {v}: {c} voxels" for v, c in zip(values, counts)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python labels.py DATA_DIR OUT_DIR")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
