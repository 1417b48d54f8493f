"""medgen's training step alone and with one busy competing process, under OpenMP and thread settings
(issue 13: two torch threads on two cores slowed down 3.5-7x when another process was busy).

torch's CPU kernels run in OpenMP (GNU libgomp in the Linux wheels). Between parallel regions its
threads spin-wait for a while (OMP_WAIT_POLICY=active / GOMP_SPINCOUNT) before they sleep; when a
competing process takes one of the two cores, a spinning thread burns its time slice while the
thread that holds the work waits for the CPU, and every region ends late. Each configuration runs
in its own child process (OpenMP reads its environment once, when torch loads), which times the
same training step in turn without and with a competitor (A B A B ...), so the ratio is measured
within one process:

- ``libgomp_default_2``: 2 threads, GOMP_SPINCOUNT=300000, libgomp's spin count when neither
  variable is set (what medgen ran with before issue 13: a waiting thread spins for milliseconds);
- ``active_2``: 2 threads, OMP_WAIT_POLICY=ACTIVE (spin without end);
- ``default_2``: 2 threads, the environment importing medgen_cli gives (it sets
  OMP_WAIT_POLICY=PASSIVE when the variable is unset, before torch loads);
- ``passive_2``: 2 threads, OMP_WAIT_POLICY=PASSIVE (sleep at once);
- ``spin10k_2``: 2 threads, GOMP_SPINCOUNT=10000 (spin briefly, then sleep);
- ``kmp0_2``: 2 threads, KMP_BLOCKTIME=0 (Intel OpenMP's knob; libgomp ignores it: a control);
- ``one_thread``: 1 thread (nothing to wait for, half the arithmetic throughput);
- ``adaptive_2``: medgen's default environment with ``runtime.adaptive_threads`` (medgen_cli/train/threads.py):
  2 threads while quiet, 1 while the competitor runs, measured in 1 s windows (3 s in training); every step of
  a phase is timed, including the ones before the governor reacts.

The step is `medgen train-ae`'s default VQ-VAE (channels 64, 128; 256 x 64 codebook; the precision
and memory format the trainer picks) on 1 x 128^2, batch 8. The competitor is ``--competitor``:
``python`` (a pure-Python spin loop, one core) or ``numpy`` (a single-threaded numpy matmul loop).
The figure of merit is busy / quiet step time (1.0: unaffected; 1.5 is what 2 threads get from a
fair share of 2 cores with a third runnable thread); ``vs_best_quiet`` compares each busy time with
the fastest quiet configuration.

Writes ``benchmarks/results/contention.json``.
Run: ``.venv/bin/python -m benchmarks.bench_contention [--quick] [--configs passive_2 ...] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

from benchmarks.common import ForeignLoad, write_result

CONFIGS = {
    "libgomp_default_2": ({"GOMP_SPINCOUNT": "300000"}, 2),
    "active_2": ({"OMP_WAIT_POLICY": "ACTIVE"}, 2),
    "default_2": ({}, 2),
    "passive_2": ({"OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "spin10k_2": ({"GOMP_SPINCOUNT": "10000"}, 2),
    "kmp0_2": ({"KMP_BLOCKTIME": "0"}, 2),
    "one_thread": ({}, 1),
    "adaptive_2": ({}, 2),  # medgen's default environment + runtime.adaptive_threads (the ThreadGovernor)
}
ADAPTIVE = {"adaptive_2"}
GOVERNOR_INTERVAL = 1.0  # seconds per measuring window here (training uses 3 s; phases here last ~5-10 s)
THREAD_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")
TARGET = 1.5  # busy / quiet of medgen's default


def competitor(kind: str) -> int:
    """A process that keeps one core busy until killed; returns its pid.

    Started through a shell that exits at once, so the competitor is not a descendant of the timed process:
    the adaptive-threads governor counts its own process tree (data-loader workers) as its own load.
    """
    code = {"python": "while True:\n    pass",
            "numpy": "import numpy as np\na = np.random.rand(256, 256)\nwhile True:\n    a = (a @ a) / 256.0"}[kind]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    line = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} </dev/null >/dev/null 2>&1 & echo $!"
    return int(subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, check=True).stdout)


def stop(pid: int) -> None:
    """Kill a competitor (not our child, so there is nothing to wait for)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def child(args) -> None:
    """Time the step quiet and busy in turn; print one JSON line."""
    import medgen_cli  # noqa: F401  before torch: its environment defaults (OpenMP wait policy) must come first
    import torch

    from benchmarks.bench_ae import medgen_default, medgen_loss, train_step

    from medgen_cli.train.threads import ThreadGovernor

    torch.set_num_threads(args.threads)
    governor = ThreadGovernor(args.threads, len(os.sched_getaffinity(0)), GOVERNOR_INTERVAL) if args.adaptive else None
    used: dict[str, list[int]] = {"quiet": [], "busy": []}
    shape = (2, 1, 64, 64) if args.quick else (8, 1, 128, 128)
    _, _, step, how = train_step(lambda: medgen_default("vqvae", 2), medgen_loss, shape, "auto", None, False)
    for _ in range(2):
        step()  # codebook initialisation, allocator warm-up
    times: dict[str, list[float]] = {"quiet": [], "busy": []}
    shares: dict[str, list[float]] = {"quiet": [], "busy": []}
    for _ in range(args.rounds):
        for phase in ("quiet", "busy"):
            proc = competitor(args.competitor) if phase == "busy" else None
            try:
                if proc is not None:
                    time.sleep(0.3)  # let it start spinning
                with ForeignLoad() as load:
                    for _ in range(args.steps):
                        t0 = time.perf_counter()
                        step()
                        times[phase].append(time.perf_counter() - t0)
                        used[phase].append(torch.get_num_threads())
                        if governor is not None:
                            governor.tick()
                shares[phase].append(load.share)
            finally:
                if proc is not None:
                    stop(proc)
    quiet, busy = statistics.median(times["quiet"]), statistics.median(times["busy"])
    print(json.dumps({
        "threads": torch.get_num_threads(), **how,
        "env": {k: os.environ[k] for k in THREAD_VARS if k in os.environ},  # as torch saw it
        "quiet_s": round(quiet, 4), "busy_s": round(busy, 4), "busy_over_quiet": round(busy / quiet, 3),
        "foreign_cpu_share_quiet": round(max(shares["quiet"]), 3), "foreign_cpu_share_busy": round(max(shares["busy"]), 3),
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "threads_per_step": used,
    }))


def run_config(name: str, args) -> dict:
    extra, threads = CONFIGS[name]
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(extra)
    cmd = [sys.executable, "-m", "benchmarks.bench_contention", "--child", "--threads", str(threads),
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--competitor", args.competitor]
    if args.quick:
        cmd.append("--quick")
    if name in ADAPTIVE:
        cmd.append("--adaptive")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.getcwd())
    if done.returncode:
        raise SystemExit(f"configuration {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny input, 1 round of 2 steps")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--competitor", choices=("python", "numpy"), default="python")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/busy alternations")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per phase")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--adaptive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick and not args.child:
        args.rounds, args.steps = 1, 2
    if args.child:
        child(args)
        return
    results = {}
    for name in args.configs:
        results[name] = r = run_config(name, args)
        print(f"{name:11s} quiet {r['quiet_s']:.3f} s  busy {r['busy_s']:.3f} s  busy/quiet {r['busy_over_quiet']:.2f}  "
              f"({r['threads']} threads, {r['precision']}, others used {r['foreign_cpu_share_quiet']:.0%} of the CPU "
              "in the quiet phases)")
    best_quiet = min(r["quiet_s"] for r in results.values())
    for r in results.values():
        r["busy_vs_best_quiet"] = round(r["busy_s"] / best_quiet, 3)
    default = results.get("default_2")
    summary = {
        "benchmark": "training step alone and with one competing busy process, per OpenMP/thread setting",
        "quick": args.quick, "competitor": args.competitor, "rounds": args.rounds, "steps_per_phase": args.steps,
        "cpu_count": os.cpu_count(), "target": f"medgen's default busy/quiet <= {TARGET}",
        "target_met": None if default is None else default["busy_over_quiet"] <= TARGET,
        "note": "KMP_BLOCKTIME is read by Intel's OpenMP only; torch's Linux wheels use GNU libgomp.",
        "configs": results,
    }
    path = write_result("contention", summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
