"""glibc allocator tuning: applied once, harmless to call again, a no-op elsewhere."""

import ctypes
import sys

import pytest

from medgen_cli.train import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_thresholds_are_raised_once(monkeypatch):
    calls = []
    real = ctypes.CDLL("libc.so.6")

    class Spy:
        def mallopt(self, option, value):
            calls.append((option, value))
            return real.mallopt(option, value)

    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Spy())
    assert allocator.tune_allocator() is True
    assert sorted(calls) == sorted(allocator.SETTINGS.items())
    assert allocator.tune_allocator() is True and len(calls) == 3  # once per process


def test_other_platforms_are_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_allocator() is False
