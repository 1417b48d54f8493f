"""Adaptive training threads (runtime.adaptive_threads): the /proc readings and the governor's decisions."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from medgen_cli.train import threads as th

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="adaptive threads read Linux's /proc")


def test_busy_seconds_parse_the_aggregate_line(tmp_path):
    stat = tmp_path / "stat"
    hz = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal: busy = everything but idle and iowait
    stat.write_text(f"cpu  {3 * hz} {hz} {2 * hz} {50 * hz} {4 * hz} 0 {hz} 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    assert th.read_busy_seconds(stat) == pytest.approx(7.0)
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError, match="aggregate"):
        th.read_busy_seconds(stat)


def test_busy_seconds_grow_no_faster_than_the_cores():
    t0, b0 = time.monotonic(), th.read_busy_seconds()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    t1, b1 = time.monotonic(), th.read_busy_seconds()
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert 0.0 <= b1 - b0 <= os.cpu_count() * (t1 - t0) + 4 * tick


def test_own_seconds_match_process_time_and_count_children():
    before_own, before_cpu = th.read_own_seconds(), time.process_time()
    end = time.process_time() + 0.3
    while time.process_time() < end:
        pass
    grew = th.read_own_seconds() - before_own
    assert grew == pytest.approx(time.process_time() - before_cpu, abs=0.05)
    # a child that burns CPU counts as ours (data-loader workers are children); another process's tree does not
    child = subprocess.Popen([sys.executable, "-c", "import time\nt=time.process_time()+0.4\nwhile time.process_time()<t: pass\n"
                              "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        mine0 = th.read_own_seconds()
        time.sleep(1.0)  # the child burns its 0.4 s and waits on stdin
        assert th.read_own_seconds() - mine0 >= 0.2
        assert th.read_own_seconds(root=child.pid) >= 0.3
    finally:
        child.communicate(b"")


@pytest.mark.parametrize("free,most,want", [(2.0, 2, 2), (1.8, 2, 2), (1.7, 2, 1), (1.0, 2, 1), (0.1, 2, 1),
                                            (3.9, 4, 4), (2.6, 4, 2), (2.8, 4, 3), (8.0, 4, 4)])
def test_threads_fit_the_free_cores(free, most, want):
    assert th.threads_for(free, most) == want


class FakeMachine:
    """A clock, the machine's busy seconds and ours, advanced by hand; records the thread counts applied."""

    def __init__(self):
        self.now, self.busy, self.own, self.applied = 0.0, 0.0, 0.0, []

    def run(self, seconds: float, ours: float, others: float) -> None:
        self.now += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def governor(self, most: int = 2, cores: int = 2) -> th.ThreadGovernor:
        return th.ThreadGovernor(most, cores, interval=3.0, busy=lambda: self.busy, own=lambda: self.own,
                                 clock=lambda: self.now, apply=self.applied.append)


def test_governor_steps_down_at_once_and_up_after_two_quiet_windows():
    m = FakeMachine()
    g = m.governor()
    m.run(1.0, ours=2.0, others=0.0)
    assert g.tick() == 2 and m.applied == []  # the window is not full yet
    m.run(2.5, ours=2.0, others=0.05)
    assert g.tick() == 2 and m.applied == []  # quiet: nothing to change
    m.run(3.0, ours=1.0, others=1.0)  # another process takes a core
    assert g.tick() == 1 and m.applied == [1]
    m.run(3.0, ours=1.0, others=1.0)
    assert g.tick() == 1 and m.applied == [1]
    m.run(3.0, ours=1.0, others=0.0)  # it stopped: one quiet window is not enough
    assert g.tick() == 1
    m.run(3.0, ours=1.0, others=0.1)
    assert g.tick() == 2 and m.applied == [1, 2] and g.changes == 2
    m.run(3.0, ours=1.0, others=1.0)
    g.tick()
    g.restore()  # the end of training gives torch its quiet count back
    assert m.applied == [1, 2, 1, 2] and g.threads == 2


def test_governor_never_counts_our_own_load_as_foreign():
    m = FakeMachine()
    g = m.governor(most=4, cores=4)
    for _ in range(5):
        m.run(3.0, ours=4.0, others=0.0)  # we fill every core ourselves
        assert g.tick() == 4
    assert m.applied == []


def test_governor_survives_an_unreadable_proc():
    m = FakeMachine()
    g = m.governor()

    def broken() -> float:
        raise OSError("no /proc")

    g._busy = broken
    m.run(5.0, ours=2.0, others=0.0)
    assert g.tick() == 2 and m.applied == []


def test_auto_only_when_asked_on_one_cpu_process(monkeypatch):
    monkeypatch.delenv("MEDGEN_ADAPTIVE_THREADS", raising=False)
    cpu = torch.device("cpu")
    th.allow_adaptive(False)
    assert th.ThreadGovernor.auto(cpu) is None  # off by default: reruns stay bit-identical
    th.allow_adaptive(True)
    try:
        monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
        assert isinstance(th.ThreadGovernor.auto(cpu), th.ThreadGovernor)
        assert th.ThreadGovernor.auto(cpu, world_size=2) is None  # DDP ranks keep their threads
        assert th.ThreadGovernor.auto(torch.device("meta")) is None
        monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
        assert th.ThreadGovernor.auto(cpu) is None  # nothing to take away from one thread
    finally:
        th.allow_adaptive(False)
    monkeypatch.setenv("MEDGEN_ADAPTIVE_THREADS", "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert th.ThreadGovernor.auto(cpu) is not None


def test_training_runtime_allows_adaptive_only_with_auto_threads():
    from medgen_cli.runtime import training_runtime

    before = torch.get_num_threads()
    try:
        with training_runtime("cpu", "fp32", threads=0, adaptive_threads=True):
            assert th._adaptive is True
        with training_runtime("cpu", "fp32", threads=1, adaptive_threads=True):
            assert th._adaptive is False  # an explicit --threads is obeyed
    finally:
        th.allow_adaptive(False)
        torch.set_num_threads(before)
