"""Shared helpers of the fault-and-bad-input suite (issue 11).

Every case drives the real CLI through typer's CliRunner and checks four things: the exit code, the
message (one sentence naming what was wrong), that no traceback was printed, and that the user's files
and the inputs are intact (``snapshot`` before, compare after).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medgen_cli.cli import app

runner = CliRunner()


def invoke(*args) -> "CliRunner.invoke":
    """Run ``medgen ARGS`` in-process; the result has ``exit_code`` and ``output``."""
    return runner.invoke(app, [str(a) for a in args], terminal_width=400)


def assert_refused(result, code: int, *phrases: str) -> None:
    """Exit ``code`` with one error sentence holding every phrase, and no traceback."""
    out = "".join(result.output.split())  # rich wraps lines (even inside paths): compare without white space
    assert result.exit_code == code, f"exit {result.exit_code} != {code}; output:\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for phrase in phrases:
        assert "".join(phrase.split()) in out, f"{phrase!r} not in output:\n{result.output}"


def snapshot(root: Path | str) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), to prove nothing was touched."""
    root = Path(root)
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cli():
    return invoke
