"""Storage benchmark: medgen's zarr store vs .nii.gz and compressed .npz for one CT-like volume.

Measures, for a 512x512x300 int16 volume (0.7x0.7x1.25 mm): size on disk, random 64^3 patch
reads per second and full-read throughput; and `medgen preprocess` of the same volume (lung
window, resampled to 1.5 mm) wall time and peak memory (of a separate process, via
resource.getrusage). And the per-item vs stacked layouts of many 2D items (issue 14,
`benchmarks.store_layouts`): 100,000 64^2 slices; write, dataset reads (batch 64, 0 and 2 workers),
encode-latents with a tiny model, preprocess --mode slices of the lung CT, files per 10k items.

Run: `python -m benchmarks.bench_store` (all; see benchmarks/README.md for the time it takes),
`--part volume|layouts`, `--quick` (small sizes, a minute; results in store_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ct_like_volume, timed, write_result

PATCH = 64
N_PATCHES = 30


def _dir_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _patch_corners(shape, n, seed=1):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - PATCH)) for s in shape) for _ in range(n)]


def bench_formats(vol: np.ndarray, tmp: Path) -> dict:
    import nibabel as nib
    import zarr
    from zarr.codecs import BloscCodec

    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    corners = _patch_corners(vol.shape, N_PATCHES)
    out = {}

    nii = tmp / "v.nii.gz"
    t_write = time.perf_counter()
    img = nib.Nifti1Image(vol, affine)
    nib.save(img, str(nii))
    t_write = time.perf_counter() - t_write

    def nii_patch():
        # nibabel must decompress gzip from the start of the file for every patch
        for c in corners[:5]:
            np.asarray(nib.load(str(nii)).dataobj[c[0]:c[0] + PATCH, c[1]:c[1] + PATCH, c[2]:c[2] + PATCH])

    t_patch, _ = timed(nii_patch, 1)
    t_full, _ = timed(lambda: np.asarray(nib.load(str(nii)).dataobj), 2)
    out["nii.gz"] = {"bytes": _dir_size(nii), "patch_ms": 1000 * t_patch / 5, "full_read_MBps": vol.nbytes / 1e6 / t_full,
                     "write_s": t_write}

    npz = tmp / "v.npz"
    t_write, _ = timed(lambda: np.savez_compressed(npz, vol=vol), 1)

    def npz_patch():
        for c in corners[:5]:
            np.load(npz)["vol"][c[0]:c[0] + PATCH, c[1]:c[1] + PATCH, c[2]:c[2] + PATCH]

    t_patch, _ = timed(npz_patch, 1)
    t_full, _ = timed(lambda: np.load(npz)["vol"], 2)
    out["npz"] = {"bytes": _dir_size(npz), "patch_ms": 1000 * t_patch / 5, "full_read_MBps": vol.nbytes / 1e6 / t_full,
                  "write_s": t_write}

    for cname in ("zstd", "lz4"):
        path = tmp / f"v_{cname}.zarr"
        codec = BloscCodec(cname=cname, clevel=3, shuffle="bitshuffle" if cname == "zstd" else "shuffle")

        def write():
            arr = zarr.create_array(str(path), shape=vol.shape, dtype=vol.dtype, chunks=(64, 64, 64), compressors=(codec,),
                                    overwrite=True)
            arr[...] = vol

        t_write, _ = timed(write, 1)
        arr = zarr.open_array(str(path), mode="r")

        def patches():
            for c in corners:
                arr[c[0]:c[0] + PATCH, c[1]:c[1] + PATCH, c[2]:c[2] + PATCH]

        t_patch, _ = timed(patches, 3)
        t_full, _ = timed(lambda: arr[...], 3)
        out[f"zarr-{cname}-64^3"] = {"bytes": _dir_size(path), "patch_ms": 1000 * t_patch / len(corners),
                                     "full_read_MBps": vol.nbytes / 1e6 / t_full, "write_s": t_write}
    for v in out.values():
        v["patches_per_s"] = 1000.0 / v["patch_ms"]
        v["MB"] = v["bytes"] / 1e6
    return out


def bench_preprocess(vol: np.ndarray, tmp: Path) -> dict:
    """Time and peak RSS of `medgen preprocess` on the volume as NRRD, in a child process."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))
    img.SetSpacing((0.7, 0.7, 1.25))
    src = tmp / "ct.nrrd"
    sitk.WriteImage(img, str(src), useCompression=True)
    code = (
        "import resource, sys, time\n"
        "from medgen_cli.settings import PreprocessSettings, load_settings\n"
        "from medgen_cli.steps import preprocess\n"
        f"s = load_settings(PreprocessSettings, None, ['intensity.window=lung', 'geometry.spacing=1.5', 'input.modality=CT'], {{'input.paths': [{str(src)!r}]}})\n"
        "t = time.perf_counter()\n"
        f"preprocess.run(s, {str(tmp / 'prep')!r}, overwrite=True)\n"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    seconds, rss_kb = res.stdout.split()[-2:]
    return {"input": f"{'x'.join(map(str, vol.shape))} int16 NRRD, 0.7x0.7x1.25 mm", "seconds": float(seconds),
            "peak_rss_MB": int(rss_kb) / 1024, "volume_MB": vol.nbytes / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run; results in store_quick.json)")
    parser.add_argument("--part", choices=("all", "volume", "layouts"), default="all")
    parser.add_argument("--items", type=int, default=100_000, help="items of the stacked layout")
    parser.add_argument("--old-items", type=int, default=10_000, help="items of the per-item layout")
    args = parser.parse_args()
    if args.quick:
        args.items, args.old_items = 2_000, 500
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "volume"):
            vol = ct_like_volume((160, 160, 96) if args.quick else (512, 512, 300))
            formats = bench_formats(vol, Path(tmp))
            prep = bench_preprocess(vol, Path(tmp))
            result.update({"volume": list(vol.shape), "dtype": "int16", "formats": formats, "preprocess": prep})
            for name, v in formats.items():
                print(f"{name:18s} {v['MB']:7.1f} MB  patch {v['patch_ms']:7.1f} ms  full {v['full_read_MBps']:7.0f} MB/s")
            print(f"preprocess: {prep['seconds']:.1f} s, peak {prep['peak_rss_MB']:.0f} MB")
        if args.part in ("all", "layouts"):
            from benchmarks.store_layouts import run

            result["layouts"] = run(Path(tmp) / "layouts", args.items, args.old_items, 20 if args.quick else 400)
    name = "store_quick" if args.quick else "store"
    previous = RESULTS / f"{name}.json"
    if args.part != "all" and previous.exists():  # one part again: keep the other part's results
        result = {**{k: v for k, v in json.loads(previous.read_text()).items() if k != "machine"}, **result}
    path = write_result(name, result)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
