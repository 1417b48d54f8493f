"""Tiled (sliding-window) encode and decode of volumes larger than memory (issue 14).

Two parts, written to ``benchmarks/results/tiled.json``:

1. ``agreement``: tiled against whole-volume inference on a CT-like phantom (48^3 KL, 64^3 VQ)
   with 16^3 tile cores, for tiny realistic 3D KL and VQ autoencoders (tests/inference/conftest.py: medgen's
   default layout, ReZero gates opened, norm affines spread, VQ codebooks initialised from data),
   per normalisation schedule (exact progressive passes; 1, 2, 4 iterated passes) and per halo
   (the receptive field, half of it, none): max |tiled - whole| in stored units, the seam measures
   at tile borders and the time. Also a model with middle self-attention (tiling cannot be exact)
   and medgen's default-size (64, 128)-channel models on a 64^3 volume.
2. ``large``: medgen's default 3D KL-VAE and VQ-VAE (``train-ae`` defaults: channels (64, 128), two
   residual blocks per level; random weights: memory and time do not depend on them) encode and
   decode a ``--size``^3 CT-like volume on the CPU, each case in its own process so that peak RSS
   (``resource.getrusage`` ``ru_maxrss`` of that process, everything included: torch, the volume,
   the latents, the tiles) is its own. The full run holds the volume, the latents and the decoded
   image as numpy arrays in memory, as the steps do (encode-latents reads an item whole, sample and
   export hold the decoded image whole); ``--io zarr`` streams them from and to zarr arrays on disk
   instead. Reported: time per stage, passes, tiles, the work of the normalisation passes relative
   to one full pass, and peak RSS. The child's log (one line per pass) goes to
   ``/tmp/bench_tiled_<kind>_<size>.log`` to follow a long run; results are written after each case.

``--quick`` (what runs in development): ``large`` at 128^3, whole and tiled (two tiles), and an
ESTIMATE of the ``--size`` run: its convolution GFLOP from the probe and the 512^3 tile plan
(computed, not run; the work factor counts the halos and the progressive passes, and is checked
against the measured one of the 128^3 tiled run) over the GFLOP/s of the whole 128^3 run, and its
peak RSS from one forward over the largest tile of that plan (run, in its own process). The full
run (``--size 512`` without ``--quick``) adds the measurements (``run_512``) to the quick results
already in the file: about 45 min for the VQ-VAE and 80 min for the KL-VAE on 2 quiet cores, by
that estimate.

Run: ``.venv/bin/python -m benchmarks.bench_tiled [--quick] [--size 512] [--max-gib 2.5] [--threads 2]
[--kinds vqvae klvae] [--io memory|zarr] [--skip-agreement]``
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, ForeignLoad, ct_like_volume, training_running, write_result

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("klvae", "vqvae")
RSS_LIMIT_GIB = 4.0
TIME_LIMIT_S = 20 * 60
# 3D convolution throughput of inference with 2 torch threads on the quiet 2-core reference machine:
# the whole 128^3 encodes and decodes of the default models ran at 96-126 GFLOP/s; used only for the
# estimate of --quick, beside the rate measured in the same run
QUIET_GFLOPS = 120


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


WATCH_S = 1.0  # the watcher's wake-up period: a stop is counted to within this
_PAUSED = [0.0]  # seconds this process was stopped (SIGSTOP by a neighbour timing its own runs), as seen so far


def _watch(every_s: float = WATCH_S, log_every: int = 30) -> None:
    """A thread that adds up the time this process was stopped (a sleep that took much longer than
    asked: CLOCK_MONOTONIC runs on while a process is stopped) and logs the current and peak RSS
    every ``every_s * log_every`` seconds, to follow a long run."""
    def loop() -> None:
        page, n = os.sysconf("SC_PAGE_SIZE"), 0
        while True:
            t0 = time.monotonic()
            time.sleep(every_s)
            late = time.monotonic() - t0 - every_s
            if late > 2 * every_s:
                _PAUSED[0] += late
                logging.getLogger("bench_tiled").info("this process was stopped for %.0f s (%.0f s in all)", late, _PAUSED[0])
            n += 1
            if n % log_every == 0:
                try:
                    now = int(Path("/proc/self/statm").read_text().split()[1]) * page / 2**30
                except (OSError, ValueError, IndexError):
                    now = float("nan")
                logging.getLogger("bench_tiled").info("rss %.2f GiB, peak %.2f GiB", now, _rss_gib())

    threading.Thread(target=loop, daemon=True).start()


class _Stage:
    """Wall seconds of a block, the seconds this process was stopped during it, and its CPU seconds."""

    def __enter__(self) -> "_Stage":
        self._t, self._p, self._c = time.perf_counter(), _PAUSED[0], _cpu_s()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t
        self.cpu = _cpu_s() - self._c
        time.sleep(WATCH_S + 1)  # a stop that ended just now is seen by the watcher's next wake-up
        self.paused = min(_PAUSED[0] - self._p, self.wall)
        self.seconds = self.wall - self.paused  # the time it took while allowed to run

    def report(self, name: str) -> dict:
        out = {f"{name}_s": round(self.seconds, 1), f"{name}_cpu_s": round(self.cpu, 1)}
        if self.paused:
            out.update({f"{name}_wall_s": round(self.wall, 1), f"{name}_stopped_s": round(self.paused, 1)})
        return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def default_model(kind: str) -> torch.nn.Module:
    from medgen_cli.models.registry import build_autoencoder
    from medgen_cli.settings.train import AutoencoderSettings

    torch.manual_seed(0)
    return build_autoencoder(kind, 3, **AutoencoderSettings(kind=kind).model_kwargs(1)).eval()


# ------------------------------------------------------------------------------------ agreement
def _roundtrip(tiler, x):
    if tiler.model.is_vq:
        return tiler.decode_indices(*tiler.encode_indices(x))
    return tiler.decode_latents(tiler.encode_latents(x))


def _variant(model, x, whole, **options) -> dict:
    from medgen_cli.inference import AutoencoderTiler, TilingOptions
    from tests.inference.conftest import borders, seams

    tiler = AutoencoderTiler(model, TilingOptions(mode="always", **options))
    t0 = time.perf_counter()
    image = _roundtrip(tiler, x)
    seconds = time.perf_counter() - t0
    measures = seams(image - whole, borders(tiler, 3))
    run = tiler.last_run
    return {"max_abs": float(np.abs(image - whole).max()), "seconds": round(seconds, 2),
            "decode_passes": run.passes, "decode_plan": run.plan,
            "seam_level_border_inside": [float(f"{v:.3g}") for v in measures["level"]],
            "seam_jump_border_inside": [float(f"{v:.3g}") for v in measures["jump"]]}


def agreement() -> dict:
    from medgen_cli.inference import AutoencoderTiler, TilingOptions
    from tests.inference.conftest import phantom, realistic, tiny

    out: dict = {"tile_core": 16}
    for kind in KINDS:
        # the VQ model's receptive field is 20 voxels (factor 4): at 48^3 its middle tile would be the volume
        x = phantom((48,) * 3 if kind == "klvae" else (64,) * 3)
        model = tiny(kind, 3, x)
        whole_tiler = AutoencoderTiler(model, TilingOptions(mode="never"))
        t0 = time.perf_counter()
        whole = _roundtrip(whole_tiler, x)
        case = {"volume": list(x.shape[2:]), "whole_seconds": round(time.perf_counter() - t0, 2)}
        probe = AutoencoderTiler(model, TilingOptions(mode="always", tile_size=16))
        _roundtrip(probe, x)
        rf = probe.probe_cost("decode_latents" if not model.is_vq else "decode_indices").halo[0] * probe.unit[0]
        case["receptive_halo_voxels"] = rf
        case["exact"] = _variant(model, x, whole, tile_size=16)
        for n in (1, 2, 4):
            case[f"iterated_{n}"] = _variant(model, x, whole, tile_size=16, norm_passes=n)
        for halo in (rf // 2, 0):
            case[f"halo_{halo}"] = _variant(model, x, whole, tile_size=16, halo=halo)
        out[kind] = case
        print(f"agreement {kind}: exact {case['exact']['max_abs']:.2e}, per-tile {case['iterated_1']['max_abs']:.2e}",
              flush=True)
    x = phantom()
    attentive = tiny("klvae", 3, x, mid_blocks=1, mid_attention=True)
    whole = _roundtrip(AutoencoderTiler(attentive, TilingOptions(mode="never")), x)
    out["klvae_mid_attention"] = _variant(attentive, x, whole, tile_size=16)
    big = phantom((64, 64, 64))
    for kind in KINDS:
        model = realistic(default_model(kind), big)
        whole = _roundtrip(AutoencoderTiler(model, TilingOptions(mode="never")), big)
        out[f"{kind}_default_64"] = _variant(model, big, whole, tile_size=32)
        print(f"agreement {kind} default channels at 64^3: {out[f'{kind}_default_64']['max_abs']:.2e}", flush=True)
    return out


# ---------------------------------------------------------------------------------- large volume
SLAB = 64


def _slabs(size: int):
    """(k0, stored values (size, size, slab)) of a CT-like volume, window -1000..1000 HU -> [-1, 1]."""
    for k0 in range(0, size, SLAB):
        hu = ct_like_volume((size, size, min(SLAB, size - k0)), seed=k0)
        yield k0, np.clip(hu.astype(np.float32), -1000, 1000) / 1000.0


def _write_volume(path: Path, size: int):
    import zarr

    arr = zarr.create_array(str(path), shape=(1, 1, size, size, size), chunks=(1, 1, 64, 64, 64), dtype="float32",
                            fill_value=0)
    for k0, values in _slabs(size):
        arr[0, 0, :, :, k0:k0 + SLAB] = values
    return arr


def _volume_array(size: int) -> np.ndarray:
    arr = np.empty((1, 1, size, size, size), np.float32)
    for k0, values in _slabs(size):
        arr[0, 0, :, :, k0:k0 + SLAB] = values
    return arr


def child(kind: str, size: int, max_gib: float, mode: str, passes: int | None, tile: tuple[int, ...] | None,
          io: str = "zarr") -> dict:
    """One case in this process: encode then decode a size^3 volume, held in memory (``io`` memory,
    as the steps hold items) or read from and written to zarr on disk (``io`` zarr)."""
    import zarr

    from medgen_cli.inference import AutoencoderTiler, TilingOptions

    model = default_model(kind)
    with tempfile.TemporaryDirectory() as tmp:
        rss_start = _rss_gib()
        x = _volume_array(size) if io == "memory" else _write_volume(Path(tmp) / "x.zarr", size)
        shape = x.shape
        tiler = AutoencoderTiler(model, TilingOptions(mode=mode, max_gib=max_gib, norm_passes=passes, tile_size=tile))
        result: dict = {"kind": kind, "size": size, "mode": mode, "max_gib": max_gib, "io": io,
                        "threads": torch.get_num_threads(), "rss_before_gib": round(rss_start, 3),
                        "rss_with_volume_gib": round(_rss_gib(), 3)}
        with ForeignLoad() as load:
            with _Stage() as stage:
                codes = tiler.encode_indices(x) if model.is_vq else [tiler.encode_latents(x)]
            result.update(stage.report("encode"))
            result["encode_run"] = tiler.last_run.as_dict() if tiler.last_run else "whole"
            result["rss_after_encode_gib"] = round(_rss_gib(), 3)
            del x  # the steps encode and decode in different processes: the image is not held twice
            gc.collect()
            out = None if io == "memory" else zarr.create_array(str(Path(tmp) / "y.zarr"), shape=shape,
                                                               chunks=(1, 1, 64, 64, 64), dtype="float32", fill_value=0)
            with _Stage() as stage:
                if model.is_vq:
                    image = tiler.decode_indices(*codes, out=out)
                else:
                    image = tiler.decode_latents(codes[0], out=out)
            result.update(stage.report("decode"))
            result["decode_run"] = tiler.last_run.as_dict() if tiler.last_run else "whole"
        every_8th = np.asarray(image[0, 0, ::8, ::8, ::8])
        result["decoded_range"] = [round(float(every_8th.min()), 3), round(float(every_8th.max()), 3)]
        result["foreign_cpu_share"] = round(load.share, 3)  # over the wall time, stopped spells included
        result["pass_seconds_note"] = "encode_run/decode_run seconds are wall times, stopped spells included"
        result["peak_rss_gib"] = round(_rss_gib(), 3)
        result["peak_rss_gb"] = round(_rss_gib() * 2**30 / 1e9, 3)
        result["fits_4_gb"] = result["peak_rss_gb"] <= RSS_LIMIT_GIB
        result["total_s"] = round(result["encode_s"] + result["decode_s"], 1)
        result["voxels"] = size**3
        result["latent_bytes"] = int(sum(c.nbytes for c in codes))
    return result


def child_tile(kind: str, stage: str, units: tuple[int, ...]) -> dict:
    """Peak RSS of one forward over the largest tile of the full-size plan (zeros in, this process)."""
    from medgen_cli.inference import AutoencoderTiler

    model = default_model(kind)
    tiler = AutoencoderTiler(model)
    if stage == "encode":
        x = torch.zeros(1, 1, *(n * u for n, u in zip(units, tiler.unit)))
        fn = model.encode_to_indices if model.is_vq else model.encode_to_latents
    else:
        grid = [n * s for n, s in zip(units, tiler.latent_scale)]
        x = torch.zeros(1, *grid, dtype=torch.int64) if model.is_vq else torch.zeros(1, model.latent_channels, *grid)
        fn = model.decode_indices if model.is_vq else model.decode_latents
    before = _rss_gib()
    t0 = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return {"tile_voxels": [n * u for n, u in zip(units, tiler.unit)], "seconds": round(time.perf_counter() - t0, 1),
            "rss_before_gib": round(before, 3), "peak_rss_gib": round(_rss_gib(), 3),
            "tile_peak_gib": round(_rss_gib() - before, 3)}


def _spawn(args: argparse.Namespace, kind: str, size: int, mode: str, max_gib: float,
           tile: tuple[int, ...] | None = None, io: str = "zarr") -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_tiled", "--child", kind, "--size", str(size), "--mode", mode,
           "--max-gib", str(max_gib), "--threads", str(args.threads), "--io", io]
    if args.passes:
        cmd += ["--passes", str(args.passes)]
    if tile:
        cmd += ["--tile", ",".join(map(str, tile))]
    log_path = Path(tempfile.gettempdir()) / f"bench_tiled_{kind}_{size}.log"
    with log_path.open("w") as log_file:
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode:
        raise SystemExit(f"case {kind} {size}^3 {mode} failed (log {log_path}):\n{log_path.read_text()[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stage_calls(model):
    """(name, bound method) of the encode and decode calls the steps make for this model."""
    if model.is_vq:
        return {"encode": ("encode_indices", model.encode_to_indices), "decode": ("decode_indices", model.decode_indices)}
    return {"encode": ("encode_latents", model.encode_to_latents), "decode": ("decode_latents", model.decode_latents)}


def _plan(kind: str, size: int, options: dict) -> dict:
    """Tile plans of encode and decode at ``size``^3 with their FLOPs, work and memory estimates
    (planning only: the inputs are zero-stride views, nothing runs at this size)."""
    from medgen_cli.inference import AutoencoderTiler, TilingOptions

    model = default_model(kind)
    tiler = AutoencoderTiler(model, TilingOptions(**options))
    grid = [size // f for f in model.downsample_factor]
    fake = lambda dtype, shape: np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape, (0,) * len(shape))  # noqa: E731
    inputs = {"encode": (fake(np.float32, (1, 1, size, size, size)), tiler.image_scale),
              "decode": (fake(np.int64, (1, *grid)) if model.is_vq else fake(np.float32, (1, model.latent_channels, *grid)),
                         tiler.latent_scale)}
    out = {}
    for stage, (name, fn) in _stage_calls(model).items():
        x, scale = inputs[stage]
        plan = tiler.plan(name, fn, [x], [scale])
        cost = tiler.probe_cost(name)
        out[stage] = {"plan": plan.describe(), "tiles": len(plan),
                      "whole_pass_gflop": round(cost.flops_per_unit * math.prod(plan.grid_shape) / 1e9, 1),
                      "work_factor": round(tiler.expected_work(name, plan), 2),
                      "largest_tile_units": list(plan.max_tile_shape),
                      "largest_tile_estimate_gib": round(cost.tile_bytes(plan.max_tile_shape) / 2**30, 3)}
    return out


def _measure_tiles(args: argparse.Namespace, kind: str, full: dict) -> None:
    """Run the largest tile of each full-size stage once, in its own process: its measured peak."""
    for stage in ("encode", "decode"):
        cmd = [sys.executable, "-m", "benchmarks.bench_tiled", "--child-tile", kind, stage,
               ",".join(map(str, full[stage]["largest_tile_units"])), "--threads", str(args.threads)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if done.returncode:
            raise SystemExit(f"largest-tile run {kind} {stage} failed:\n{done.stderr[-3000:]}")
        full[stage]["largest_tile_run"] = json.loads(done.stdout.strip().splitlines()[-1])


def _estimate(whole: dict, quick_plan: dict, full: dict, size: int) -> dict:
    """Full-size time = whole-pass GFLOP x work factor (FLOPs of the tiled run over one whole pass,
    from the probe and the plan: load-independent) / GFLOP/s (measured by the whole quick run, so
    as loaded as the machine was; also given at QUIET_GFLOPS). RSS = the quick run's start + the
    largest tile (its measured peak, or the estimate if larger) + the latents."""
    est: dict = {}
    seconds, quiet = 0.0, 0.0
    for stage in ("encode", "decode"):
        rate = quick_plan[stage]["whole_pass_gflop"] / whole[f"{stage}_s"]
        gflop = full[stage]["whole_pass_gflop"] * full[stage]["work_factor"]
        est[f"{stage}_gflop"] = round(gflop)
        est[f"{stage}_measured_gflops"] = round(rate, 1)
        seconds += gflop / rate
        quiet += gflop / QUIET_GFLOPS
    latents = whole["latent_bytes"] * (size / whole["size"]) ** 3
    largest = max(max(full[s]["largest_tile_estimate_gib"], full[s].get("largest_tile_run", {}).get("tile_peak_gib", 0))
                  for s in ("encode", "decode"))
    est["peak_rss_gib"] = round(whole["rss_before_gib"] + largest + latents / 2**30, 2)
    est["total_s_at_measured_rate"] = round(seconds)
    est[f"total_s_at_{QUIET_GFLOPS}_gflops"] = round(quiet)
    est["fits_4_gib"] = est["peak_rss_gib"] <= RSS_LIMIT_GIB
    est["fits_20_min_at_measured_rate"] = seconds <= TIME_LIMIT_S
    est[f"fits_20_min_at_{QUIET_GFLOPS}_gflops"] = quiet <= TIME_LIMIT_S
    return est


def _previous() -> dict:
    """The results already in the file (a full run keeps the quick run's estimates beside its measurements)."""
    try:
        return json.loads((RESULTS / "tiled.json").read_text())
    except (OSError, ValueError):
        return {}


def _write(result: dict, large: dict, complete: bool) -> Path:
    result["large"] = large
    result["complete"] = complete
    result["machine_busy"] = any(
        v.get("foreign_cpu_share", 0) > 0.1 for case in large.values() for v in case.values() if isinstance(v, dict))
    return write_result("tiled", {k: v for k, v in result.items() if k != "machine"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="128^3 runs and an estimate of the full size")
    parser.add_argument("--size", type=int, default=512, help="edge of the large volume (full run)")
    parser.add_argument("--max-gib", type=float, default=2.5, help="tiling.max_gib of the large runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=None, help="tiling.norm_passes (default: exact)")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--io", choices=("memory", "zarr"), default="memory",
                        help="full run: volume, latents and image in memory (as the steps) or on disk (zarr)")
    parser.add_argument("--skip-agreement", action="store_true")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--child-tile", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=lambda v: tuple(int(t) for t in v.split(",")), default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("medgen_cli.inference.runner").setLevel(logging.DEBUG)  # one line per pass
        _watch()
        print(json.dumps(child(args.child, args.size, args.max_gib, args.mode, args.passes, args.tile, args.io)))
        return
    if args.child_tile:
        kind, stage, units = args.child_tile
        print(json.dumps(child_tile(kind, stage, tuple(int(u) for u in units.split(",")))))
        return
    previous = {} if args.quick else _previous()
    result: dict = {"benchmark": "tiled encode/decode of large volumes", "quick": args.quick, "torch_threads": args.threads,
                    "training_run_seen": training_running(), "rss_limit_gib": RSS_LIMIT_GIB}
    large: dict = {k: v for k, v in previous.get("large", {}).items() if not args.quick}
    if "agreement" in previous:
        result["agreement"] = previous["agreement"]
    if args.quick and not args.skip_agreement:
        result["agreement"] = agreement()
    _write(result, large, complete=False)
    for kind in args.kinds:
        if args.quick:
            quick = 128
            whole = _spawn(args, kind, quick, "never", args.max_gib)
            # two tiles along z: enough to measure the work of the passes relative to one full pass
            tiled = _spawn(args, kind, quick, "always", args.max_gib, tile=(quick, quick, quick // 2))
            quick_plan = _plan(kind, quick, {"mode": "always", "tile_size": (quick, quick, quick // 2)})
            for stage in ("encode", "decode"):  # the work factor the plan predicts against the one measured
                run = tiled[f"{stage}_run"]
                quick_plan[stage]["measured_work_factor"] = round(sum(run["pass_seconds"]) / whole[f"{stage}_s"], 2)
            full = _plan(kind, args.size, {"max_gib": args.max_gib, "norm_passes": args.passes})
            _measure_tiles(args, kind, full)
            large[kind] = {"whole_128": whole, "tiled_128": tiled, "plan_128_tiled": quick_plan, f"plan_{args.size}": full,
                           f"estimate_{args.size}": _estimate(whole, quick_plan, full, args.size)}
        else:
            run = _spawn(args, kind, args.size, "auto", args.max_gib, io=args.io)
            large[kind] = {**large.get(kind, {}), f"run_{args.size}": run}
        print(f"large {kind}: {json.dumps(large[kind])[:600]}", flush=True)
        _write(result, large, complete=False)
    if not args.quick and not args.skip_agreement:  # after the long runs, which the machine gets first
        result["agreement"] = agreement()
    # complete: every autoencoder kind has its full-size run (a --kinds subset leaves the others to a later run)
    done = args.quick or all(f"run_{args.size}" in large.get(kind, {}) for kind in KINDS)
    path = _write(result, large, complete=done)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
