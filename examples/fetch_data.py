#!/usr/bin/env python3
"""Fetch the real medical images medgen's examples and tests use (see ../shared/DATA.md).

Nothing is committed and nothing is downloaded at run time by medgen itself: this script asks
PyPI for a few packages that ship real images (`pip download --no-deps`), unpacks only the
images into a cache (``$MEDGEN_DATA``, default ``~/.cache/medgen/data``) and prints its path.
Files already in the cache are not fetched again.

    pyradiomics 3.0.1 sdist -> lung1/lung2 CT (HU, NRRD), brain1/brain2 MR, breast1 MR
    pydicom-data            -> RG3_UNCR.dcm (CR radiograph, MONOCHROME1), MR2_UNCR.dcm
    dipy                    -> S0_10slices.nii.gz, aniso_vox.nii.gz (MR)
    nilearn                 -> mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz (MR T1 template, brain only)
    pydeface                -> mean_reg2mean.nii.gz (MR T1 template, whole head)

The two templates are averages of many people, not subjects: examples use them as extra training
images only, never to measure quality.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WANTED = {
    "pyradiomics==3.0.1": [f"pyradiomics-3.0.1/data/{n}" for n in (
        "lung1_image.nrrd", "lung2_image.nrrd", "brain1_image.nrrd", "brain2_image.nrrd", "breast1_image.nrrd",
        "lung1_label.nrrd", "lung2_label.nrrd")],
    "pydicom-data": ["data_store/data/RG3_UNCR.dcm", "data_store/data/MR2_UNCR.dcm"],
    "dipy": ["dipy/data/files/S0_10slices.nii.gz", "dipy/data/files/aniso_vox.nii.gz"],
    "nilearn": ["nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"],
    "pydeface": ["pydeface/data/mean_reg2mean.nii.gz"],
}


def cache_dir() -> Path:
    return Path(os.environ.get("MEDGEN_DATA", Path.home() / ".cache" / "medgen" / "data"))


def _extract(archive: Path, members: list[str], dest: Path) -> None:
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            for m in members:
                if m in names:
                    with tar.extractfile(m) as src, open(dest / Path(m).name, "wb") as out:
                        shutil.copyfileobj(src, out)
    else:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for m in members:
                if m in names:
                    with zf.open(m) as src, open(dest / Path(m).name, "wb") as out:
                        shutil.copyfileobj(src, out)


def fetch(dest: Path | None = None, quiet: bool = False) -> Path:
    dest = dest or cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for requirement, members in WANTED.items():
        if all((dest / Path(m).name).exists() for m in members):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation", requirement, "-d", tmp]
            if requirement.startswith("pyradiomics"):
                cmd += ["--no-binary", ":all:"]
            result = subprocess.run(cmd, capture_output=True, text=True)
            archives = sorted(Path(tmp).iterdir())
            if result.returncode != 0 or not archives:
                print(f"warning: could not fetch {requirement}: {result.stderr.strip()[-300:]}", file=sys.stderr)
                continue
            _extract(archives[0], members, dest)
    if not quiet:
        print(dest)
    return dest


if __name__ == "__main__":
    fetch()
