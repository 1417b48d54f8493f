"""The worker pool of the steps: results come back, and an interrupted parent ends its workers at once."""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

import pytest

from medgen_cli.steps import _workers


def test_run_pool_hands_back_every_result_with_its_job():
    got: dict[int, object] = {}
    dones = []

    def on_result(n, result, done):
        got[n] = result
        dones.append(done)

    _workers.run_pool(divmod, [(7, 2), (9, 4), (1, 1)], 2, on_result)
    assert got == {0: (3, 1), 1: (2, 1), 2: (1, 0)} and sorted(dones) == [1, 2, 3]


def test_an_interrupted_parent_terminates_its_workers_at_once():
    seen: list[int] = []
    before = {p.pid for p in multiprocessing.active_children()}  # other tests' children are not the pool's

    def on_result(n, result, done):
        seen.extend(p.pid for p in multiprocessing.active_children() if p.pid not in before)
        raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM via stop_on_sigterm) does in the parent

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        # the first job ends at once; the two others would sleep for a minute
        _workers.run_pool(time.sleep, [(0,), (60,), (60,)], 2, on_result)
    assert time.monotonic() - start < 20
    assert seen

    def alive() -> set[int]:
        return set(seen) & {p.pid for p in multiprocessing.active_children()}

    deadline = time.monotonic() + 10  # reaping a killed child can lag on a loaded machine (a CI run with -n 2)
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive() and time.monotonic() - start < 30
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_die_with_parent_is_available_on_linux():
    pid = os.fork()
    if pid == 0:  # in a throw-away child: setting the parent-death signal must succeed
        os._exit(0 if _workers._die_with_parent() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_stop_on_sigterm_raises_in_the_main_thread_and_restores_the_handler():
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="stopped by SIGTERM"):
        with _workers.stop_on_sigterm(lambda sig: RuntimeError(f"stopped by {sig}")):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert signal.getsignal(signal.SIGTERM) == before
