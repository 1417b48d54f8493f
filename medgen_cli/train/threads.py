"""Adaptive CPU threads: train on fewer threads while other processes keep cores busy.

Two torch threads on two cores share every parallel region: when another process takes one core, each
region waits for the thread that lost its core, and a step ran 1.86x its quiet time (benchmarks/
bench_contention.py), against 1.02x for one thread (which has nothing to wait for). The governor watches the
CPU time of everything outside medgen's own process tree (``/proc/stat`` minus this process and its
children, e.g. data-loader workers) over windows of a few seconds and sets torch's intra-op threads to the
cores left free: fewer at once when others are busy, back up after two quiet windows.

It is off by default and runs only when asked (``runtime.adaptive_threads: true``, or the environment
variable ``MEDGEN_ADAPTIVE_THREADS=1``), on the CPU device, in a single process (not under DDP), with
``runtime.threads`` 0 (an explicit ``--threads N`` is obeyed), on Linux (``/proc``). Off by default because a
thread count changes floating-point summation order: a run whose threads changed with the machine's load is
not bit-identical to a rerun with the same seed (the project promises that a seed gives the same result on the
CPU); turn it on for throughput on a shared machine.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_adaptive = False  # set per training run by `allow_adaptive` (runtime.adaptive_threads with runtime.threads 0)


def allow_adaptive(on: bool) -> None:
    """Let the next training runs of this process adapt their threads (``runtime.adaptive_threads``)."""
    global _adaptive
    _adaptive = on


def read_busy_seconds(stat: Path = Path("/proc/stat")) -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``'s first line minus idle and iowait)."""
    fields = stat.read_text().split("\n", 1)[0].split()
    if fields[0] != "cpu":
        raise ValueError(f"{stat} does not start with the aggregate 'cpu' line")
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _proc_cpu_seconds(pid: int) -> tuple[float, int]:
    """(user + system CPU seconds, parent pid) of one process from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    rest = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK"), int(rest[1])


def read_own_seconds(root: int | None = None) -> float:
    """CPU seconds used by process ``root`` (default: this one) and all its descendants still running."""
    root = os.getpid() if root is None else root
    cpu: dict[int, float] = {}
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cpu[int(entry.name)], parent[int(entry.name)] = _proc_cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # the process ended while we looked
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def threads_for(free_cores: float, most: int) -> int:
    """Threads that fit ``free_cores`` (rounded up from 0.75 of a core), between 1 and ``most``."""
    return max(1, min(most, math.floor(free_cores + 0.25)))


class ThreadGovernor:
    """Set torch's threads to the cores other processes leave free; call `tick` once per training step.

    Args:
        most: the thread count of a quiet machine (the count torch chose, one per physical core).
        cores: cores this process may run on (its CPU affinity).
        interval: seconds per measuring window.
        busy: ``() -> busy CPU seconds of the whole machine``; own: ``() -> CPU seconds of this process tree``;
        clock: wall clock (seconds); apply: ``apply(n)`` sets the threads (tests pass fakes).
    """

    def __init__(self, most: int, cores: int, interval: float = 3.0, *,
                 busy: Callable[[], float] = read_busy_seconds, own: Callable[[], float] = read_own_seconds,
                 clock: Callable[[], float] = time.monotonic, apply: Callable[[int], None] = torch.set_num_threads):
        self.most, self.cores, self.interval = most, cores, interval
        self._busy, self._own, self._clock, self._apply = busy, own, clock, apply
        self.threads = most
        self.changes = 0
        self._quiet_windows = 0
        self._mark = (clock(), busy(), own())

    @classmethod
    def auto(cls, device: torch.device, world_size: int = 1) -> ThreadGovernor | None:
        """A governor when adaptive threads apply here (see the module docstring), else None."""
        wanted = _adaptive or os.environ.get("MEDGEN_ADAPTIVE_THREADS", "0") == "1"
        if not wanted or device.type != "cpu" or world_size > 1:
            return None
        most = torch.get_num_threads()
        if most < 2:
            return None
        try:
            cores = len(os.sched_getaffinity(0))
            return cls(most, cores)
        except (OSError, ValueError, AttributeError):  # no /proc (macOS, Windows): keep torch's threads
            return None

    def foreign_cores(self) -> float | None:
        """Cores other processes used in the window now ending (None before the window is full)."""
        now = self._clock()
        start, busy0, own0 = self._mark
        if now - start < self.interval:
            return None
        busy, own = self._busy(), self._own()
        self._mark = (now, busy, own)
        return max(0.0, (busy - busy0) - (own - own0)) / (now - start)

    def tick(self) -> int:
        """Measure at the end of each window and change the threads when needed; returns the thread count."""
        try:
            foreign = self.foreign_cores()
        except (OSError, ValueError):
            return self.threads
        if foreign is None:
            return self.threads
        want = threads_for(self.cores - foreign, self.most)
        if want < self.threads:  # others are busy now: step down at once
            self._set(want, foreign)
        elif want > self.threads:  # step up only after two quiet windows in a row
            self._quiet_windows += 1
            if self._quiet_windows >= 2:
                self._set(want, foreign)
        else:
            self._quiet_windows = 0
        return self.threads

    def restore(self) -> None:
        """Give torch back the quiet machine's thread count (at the end of training)."""
        if self.threads != self.most:
            self._apply(self.most)
            self.threads = self.most

    def _set(self, threads: int, foreign: float) -> None:
        self._apply(threads)
        self._quiet_windows = 0
        self.changes += 1
        log.info("other processes use %.1f of %d cores: training on %d of %d threads", foreign, self.cores,
                 threads, self.most)
        self.threads = threads
