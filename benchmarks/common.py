"""Helpers shared by the benchmarks: a CT-like phantom, timing, result files, and the MONAI
baseline kept outside medgen's dependencies (``benchmarks/.monai``, see benchmarks/README.md)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MONAI_DIR = Path(__file__).parent / ".monai"
MONAI_VERSION = "1.6.1"
# Commands whose presence means the machine is shared with a training run.
TRAINING_PATTERNS = ("medgen.*train-ae", "medgen.*train-prior")
# A timed call during which other processes used more than this share of the CPU counts as disturbed.
BUSY_SHARE = 0.1


def ct_like_volume(shape=(512, 512, 300), seed=0) -> np.ndarray:
    """An int16 CT-like volume in HU: air, a body ellipse of soft tissue, lungs, bone ring, noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    lungs = (((x - 0.35) / 0.25) ** 2 + (y / 0.4) ** 2 < 1) | (((x + 0.35) / 0.25) ** 2 + (y / 0.4) ** 2 < 1)
    bone = np.abs((x / 0.8) ** 2 + (y / 0.6) ** 2 - 0.95) < 0.04
    plane = np.full(shape[:2], -1000.0, np.float32)
    plane[body] = 40.0
    plane[lungs] = -850.0
    plane[bone] = 700.0
    vol = np.empty(shape, np.int16)
    for k in range(shape[2]):
        drift = 20.0 * np.sin(k / 17.0)
        vol[:, :, k] = np.clip(plane + drift * body + rng.normal(0, 12, shape[:2]), -1024, 3071).astype(np.int16)
    return vol


def timed(fn, repeats=3):
    """Median wall time of ``repeats`` calls (and the last result)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}, **data}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _busy_cpu_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (from /proc/stat; 0 where unavailable)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ForeignLoad:
    """Share of the machine's CPU used by *other* processes while the block runs (0 = quiet machine).

    ``share`` = (CPU seconds of all processes - this process's) / (cores x wall seconds).
    """

    def __enter__(self) -> ForeignLoad:
        self._t, self._busy, self._own = time.perf_counter(), _busy_cpu_seconds(), sum(os.times()[:2])
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t
        foreign = (_busy_cpu_seconds() - self._busy) - (sum(os.times()[:2]) - self._own)
        self.share = max(0.0, foreign / ((os.cpu_count() or 1) * max(wall, 1e-9)))


class QuietGate:
    """Keeps timed calls off a shared machine's busy spells, within a total waiting budget.

    Before a timed call, `wait` polls until no training run is seen and other processes use less
    than `BUSY_SHARE` of the CPU; a call that was disturbed anyway is redone (`redo`). Once
    `budget_s` seconds have been spent waiting, calls run as they come and are flagged by their
    ``foreign_cpu_share``. A budget of 0 turns the gate off.
    """

    def __init__(self, budget_s: float = 0.0, poll_s: float = 2.0, max_redos: int = 3):
        self.remaining, self.poll_s, self.max_redos = float(budget_s), poll_s, max_redos
        self.waited_s, self.discarded = 0.0, 0

    def wait(self) -> None:
        while self.remaining > 0:
            t0 = time.perf_counter()
            with ForeignLoad() as load:
                time.sleep(self.poll_s)
            quiet = load.share < BUSY_SHARE and not training_running()
            spent = time.perf_counter() - t0
            self.remaining -= spent
            self.waited_s += spent
            if quiet:
                return
            time.sleep(min(max(self.remaining, 0.0), 8.0))  # a busy spell: look again in a while
            self.remaining -= 8.0
            self.waited_s += 8.0

    def redo(self, share: float, redos: int) -> bool:
        """True when a call disturbed by ``share`` of foreign load should be discarded and rerun."""
        if share <= BUSY_SHARE or self.remaining <= 0 or redos >= self.max_redos:
            return False
        self.discarded += 1
        return True

    def report(self) -> dict:
        return {"quiet_wait_s": round(self.waited_s, 1), "disturbed_runs_discarded": self.discarded,
                "quiet_budget_left_s": round(max(self.remaining, 0.0), 1)}


def bench(fn: Callable[[], object], repeats: int = 3, warmup: int = 1, budget_s: float | None = None,
          gate: QuietGate | None = None) -> dict:
    """Time ``fn`` after ``warmup`` untimed calls: median and all of up to ``repeats`` timed calls.

    With ``budget_s``, stop repeating once the timed calls so far have taken that long (a slow case
    then gets fewer repeats; ``len(times_s)`` says how many). ``foreign_cpu_share`` is the largest
    share of the CPU that other processes used during a kept timed call.
    """
    return bench_interleaved({"_": fn}, repeats, warmup, budget_s, gate)["_"]


def bench_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int = 3,
    warmup: int = 1,
    budget_s: float | None = None,
    gate: QuietGate | None = None,
) -> dict[str, dict]:
    """Like `bench` for several functions, timed in turn (A B A B ...) so that a passing load on the
    machine hits each of them alike; ``budget_s`` applies to each function's total."""
    gate = gate or QuietGate(0)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    shares: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for key, fn in fns.items():
            if budget_s is not None and sum(times[key]) >= budget_s:
                continue
            redos = 0
            while True:
                gate.wait()
                with ForeignLoad() as load:
                    t0 = time.perf_counter()
                    fn()
                    elapsed = time.perf_counter() - t0
                if not gate.redo(load.share, redos):
                    break
                redos += 1
            times[key].append(elapsed)
            shares[key].append(load.share)
    return {
        k: {"median_s": statistics.median(times[k]), "min_s": round(min(times[k]), 4),
            "times_s": [round(t, 4) for t in times[k]], "foreign_cpu_share": round(max(shares[k]), 3)}
        for k in fns
    }


def training_running() -> bool:
    """True while a ``medgen train-ae`` / ``train-prior`` process shares this machine."""
    for pattern in TRAINING_PATTERNS:
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        if found.stdout.strip():
            return True
    return False


def import_monai():
    """Import MONAI from ``benchmarks/.monai`` (never a medgen dependency); fail with the install command."""
    if MONAI_DIR.is_dir() and str(MONAI_DIR) not in sys.path:
        sys.path.insert(0, str(MONAI_DIR))
    try:
        import monai
    except ImportError as err:
        raise SystemExit(
            f"MONAI is not installed for the benchmarks ({err}). Run:\n"
            f"  .venv/bin/python -m pip install --no-deps --target {MONAI_DIR} monai=={MONAI_VERSION}"
        ) from err
    if monai.__version__ != MONAI_VERSION:
        print(f"WARNING: benchmarking MONAI {monai.__version__}, the baselines quote {MONAI_VERSION}", file=sys.stderr)
    return monai


def param_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (matmuls, convolutions, attention) by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
