"""Worker processes that never outlive the step that started them.

``run_pool`` runs jobs in spawned worker processes and hands each result back to the parent as it
finishes. Whatever ends the parent, no worker goes on writing:

* SIGKILL (or a crash) of the parent: every worker asked the kernel to SIGKILL it when its parent
  dies (Linux ``prctl(PR_SET_PDEATHSIG)``), and a watcher thread in each worker exits when the
  parent pid changes (the fallback elsewhere, and for the moment between fork and ``prctl``).
* SIGTERM of the parent: ``stop_on_sigterm`` turns it into an exception in the main thread.
* That exception, Ctrl-C (workers ignore SIGINT; the parent gets KeyboardInterrupt) or any error
  in the parent's result handling: pending jobs are cancelled and the workers terminated (then
  killed if they linger) before the exception goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_SECONDS = 0.5


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def init_worker(parent_pid: int) -> None:
    """Pool initializer: ignore Ctrl-C (the parent stops the pool) and die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="medgen-parent-watch").start()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now, whatever they are doing."""
    # the executor keeps no public handle on its processes; _processes has been there since Python 3.2
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def run_pool(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int,
             on_result: Callable[[int, Any, int], None]) -> None:
    """Run ``fn(*job)`` for every job in ``workers`` spawned processes.

    Args:
        fn: a module-level function (it is pickled by name).
        jobs: argument tuples, one per call.
        workers: number of worker processes.
        on_result: called in the parent as ``on_result(job_index, result, done)`` as each job
            finishes, in completion order; an exception it raises stops the pool.
    """
    pool = ProcessPoolExecutor(max_workers=max(1, min(workers, len(jobs))), mp_context=get_context("spawn"),
                               initializer=init_worker, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(fn, *job): n for n, job in enumerate(jobs)}
        for done, fut in enumerate(as_completed(futures), 1):
            on_result(futures[fut], fut.result(), done)
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


class Terminated(Exception):
    """The process received SIGTERM (raised in the main thread by ``stop_on_sigterm``)."""


@contextmanager
def stop_on_sigterm(make_error: Callable[[str], BaseException] = Terminated) -> Iterator[None]:
    """Within the block, SIGTERM raises ``make_error("SIGTERM")`` in the main thread, so that clean-up
    (stopping workers, releasing locks) runs; outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise make_error(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
