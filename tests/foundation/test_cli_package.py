"""The CLI layer is one package, ``medgen_cli/cli/``: the only code that imports typer, reachable as the
``medgen`` console script, ``python -m medgen_cli`` and ``python -m medgen_cli.cli`` (torchrun's form)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

import medgen_cli
from medgen_cli import __version__
from medgen_cli.cli import app

ROOT = Path(medgen_cli.__file__).parent
STEPS = ["preprocess", "train-ae", "encode-latents", "train-prior", "sample", "evaluate", "export", "inspect", "config"]


def imports_typer(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "typer" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "typer":
            return True
    return False


def test_only_the_cli_package_imports_typer():
    importers = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if imports_typer(p)}
    assert importers and all(p.startswith("cli/") for p in importers), sorted(importers)


def test_the_console_script_points_at_the_cli_main():
    scripts = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["medgen"].split(":")
    assert (module, func) == ("medgen_cli.cli", "main")
    from medgen_cli.cli import main

    assert callable(main)


def test_help_lists_the_steps_in_pipeline_order():
    res = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert res.exit_code == 0
    listed = [line.split()[1] for line in res.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2]
    assert [name for name in listed if name in STEPS] == STEPS, res.output


def test_both_module_entry_points_run(tmp_path):
    for module in ("medgen_cli", "medgen_cli.cli"):
        done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120,
                              cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.strip() == f"medgen {__version__}", (module, done.stderr)
