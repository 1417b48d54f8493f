"""Helpers shared by the benchmarks: a CT-like phantom, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


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
