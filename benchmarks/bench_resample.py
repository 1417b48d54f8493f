"""Benchmark the two resampling backends of ``medgen_cli.preprocess.spatial.resample``.

A 512x512x256 float32 volume at 0.7x0.7x1.25 mm is resampled to 1.5 mm isotropic (linear,
anti-aliased), median of 3, with 2 torch threads. Alongside, the plain baselines of BASELINES.md
(``sitk.Resample`` and ``torch.nn.functional.interpolate``, both without anti-aliasing) so the
ratio can be quoted. Agreement is checked on a smooth phantom (unit amplitude), away from the
borders. Writes ``benchmarks/results/resample.json``; ``spatial.AUTO_BACKEND`` follows it.

Run: ``.venv/bin/python -m benchmarks.bench_resample [--shape 512 512 256] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk
import torch

from benchmarks.common import timed, write_result
from medgen_cli.meta import ImageMeta, affine_from_geometry
from medgen_cli.preprocess import spatial

SPACING = (0.7, 0.7, 1.25)
TARGET = 1.5


def phantom(shape) -> np.ndarray:
    """Smooth test volume: long-wavelength sinusoids in world mm, values in about [-1, 1]."""
    x, y, z = (np.arange(n, dtype=np.float32) * s for n, s in zip(shape, SPACING))
    return (
        0.5 * np.sin(x / 23.0)[:, None, None] * np.cos(y / 29.0)[None, :, None]
        + 0.5 * np.sin(z / 31.0 + 0.3)[None, None, :]
    ).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 256))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)

    shape = tuple(args.shape)
    arr = phantom(shape)
    meta = ImageMeta(affine=affine_from_geometry(SPACING, (0.0, 0.0, 0.0), np.eye(3)))
    times, outs = {}, {}
    for backend in ("torch", "sitk"):
        times[f"medgen_{backend}_antialias"], (outs[backend], m) = timed(
            lambda b=backend: spatial.resample(arr, meta, TARGET, backend=b), args.repeats)
    times["medgen_torch_no_antialias"], _ = timed(
        lambda: spatial.resample(arr, meta, TARGET, antialias=False, backend="torch"), args.repeats)
    times["medgen_sitk_no_antialias"], _ = timed(
        lambda: spatial.resample(arr, meta, TARGET, antialias=False, backend="sitk"), args.repeats)

    # Baselines (no anti-aliasing): the figures BASELINES.md quotes.
    img = sitk.GetImageFromArray(arr.T.copy())
    img.SetSpacing(SPACING)
    size = list(outs["torch"].shape)
    times["baseline_sitk_resample"], _ = timed(lambda: sitk.Resample(
        img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (TARGET,) * 3,
        img.GetDirection(), 0.0, sitk.sitkFloat32), args.repeats)
    t = torch.from_numpy(arr)[None, None]
    times["baseline_torch_interpolate"], _ = timed(
        lambda: torch.nn.functional.interpolate(t, size=size, mode="trilinear", align_corners=False),
        args.repeats)

    b = 4  # interior: away from the border treatment, which differs by design
    interior = tuple(slice(b, n - b) for n in size)
    diff = float(np.max(np.abs(outs["torch"][interior] - outs["sitk"][interior])))
    faster = min(("torch", "sitk"), key=lambda k: times[f"medgen_{k}_antialias"])
    result = {
        "task": f"{'x'.join(map(str, shape))} float32 {SPACING} mm -> {TARGET} mm isotropic, linear",
        "output_shape": size,
        "output_affine": m.affine.tolist(),
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "seconds_median": {k: round(v, 4) for k, v in times.items()},
        "max_abs_diff_interior_torch_vs_sitk": diff,
        "phantom_range": [float(arr.min()), float(arr.max())],
        "faster_antialiased_backend": faster,
        "speedup_vs_other_backend": round(
            max(times["medgen_torch_antialias"], times["medgen_sitk_antialias"])
            / min(times["medgen_torch_antialias"], times["medgen_sitk_antialias"]), 2),
        "auto_backend": spatial.AUTO_BACKEND,
        "versions": {"torch": torch.__version__, "simpleitk": sitk.Version.VersionString()},
    }
    path = write_result("resample", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    if faster != spatial.AUTO_BACKEND:
        print(f"NOTE: the faster backend here is {faster!r} but spatial.AUTO_BACKEND is {spatial.AUTO_BACKEND!r}")


if __name__ == "__main__":
    main()
