"""The floors of the package (docs/ARCHITECTURE.md) and its size limits, read from the source with ``ast``.

- dependencies point down the floors (``FLOORS``, the table of ARCHITECTURE.md), with one allowed exception;
  nothing below ``steps`` imports ``steps`` or the CLI; models, nn and samplers never
  import settings, io, artefacts or steps; the pure preprocess functions never import io;
- only the CLI layer imports typer;
- no file over 400 lines, no function over 80 lines, no ``__init__`` over 8 arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "medgen_cli"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _top(name: str) -> str | None:
    """The first-level sub-package or module of medgen_cli that ``name`` is in (None outside medgen_cli)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "medgen_cli" and len(parts) > 1 else None


def _is_cli(path: Path) -> bool:
    return _module(path).split(".")[1:2] == ["cli"]


# the floors of docs/ARCHITECTURE.md: a module imports its own floor or lower ones
FLOORS = {
    "meta": 1, "errors": 1, "windows": 1, "__init__": 1, "__version__": 1, "__main__": 9,
    "nn": 2, "io": 2, "preprocess": 2,
    "models": 3, "sampling": 3, "inference": 3,
    "data": 4, "metrics": 4, "viz": 4,
    "settings": 5,
    "train": 6,
    "artefacts": 7, "artefacts_manifest": 7, "artefacts_writer": 7, "artefacts_url": 7, "loaders": 7, "priors": 7,
    "runtime": 7, "export": 7, "safety": 7,
    "steps": 8,
    "cli": 9,
}
# the one upward import ARCHITECTURE.md allows: the settings consult the prior registry while validating
ALLOWED_UP = {("settings", "priors")}

# floor -> first-level names it must never import (stricter than the floor order)
FORBIDDEN = {
    "models": {"settings", "io", "artefacts", "artefacts_url", "steps", "cli", "loaders", "priors", "train"},
    "nn": {"settings", "io", "artefacts", "artefacts_url", "steps", "cli", "loaders", "priors", "models", "train"},
    "sampling": {"settings", "io", "artefacts", "artefacts_url", "steps", "cli", "loaders", "priors", "train"},
    "preprocess": {"io", "artefacts", "artefacts_url", "steps", "cli", "loaders", "settings"},
    "metrics": {"steps", "cli", "settings"},
    "viz": {"steps", "cli", "settings"},
    "io": {"steps", "cli", "settings", "models", "priors", "train", "loaders"},
    "train": {"steps", "cli"},
    "data": {"steps", "cli"},
    "inference": {"steps", "cli", "settings"},
    "loaders": {"steps", "cli"},
    "priors": {"steps", "cli"},
    "settings": {"steps", "cli"},
}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_floors(path: Path) -> None:
    floor = _module(path).split(".")[1] if "." in _module(path) else None
    imported = _imports(path)
    below = {t for t in map(_top, imported) if t} & FORBIDDEN.get(floor, set())
    assert not below, f"{path.relative_to(PACKAGE)} ({floor}/) imports {sorted(below)}, which sit above it"
    if not _is_cli(path):
        assert "typer" not in {name.split(".")[0] for name in imported}, f"{path} imports typer outside the CLI"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _module(path).split(".")[1] if "." in _module(path) else "__init__"
    up = sorted(t for t in {_top(n) for n in _imports(path)} - {None, own}
                if FLOORS[t] > FLOORS[own] and (own, t) not in ALLOWED_UP)
    assert not up, f"{path.relative_to(PACKAGE)} (floor {FLOORS[own]}) imports {up} from higher floors"


def _function_lengths(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_size_limits(path: Path) -> None:
    """No file over 400 lines, no function over 80 lines, no __init__ over 8 arguments (self excluded)."""
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 400, f"{path.relative_to(PACKAGE)} has {text.count(chr(10))} lines (> 400)"
    for node in _function_lengths(ast.parse(text)):
        length = node.end_lineno - node.lineno + 1
        assert length <= 80, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} has {length} lines (> 80)"
        if node.name == "__init__":
            a = node.args
            count = len(a.posonlyargs) + len(a.args) - 1 + len(a.kwonlyargs) + bool(a.vararg)
            assert count <= 8, f"{path.relative_to(PACKAGE)}:{node.lineno} __init__ takes {count} arguments (> 8)"


def test_every_package_has_a_floor() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    assert tops <= set(FLOORS), sorted(tops - set(FLOORS))  # a new package must be given its floor


def test_floor_table_names_real_packages() -> None:
    """The table above names packages that exist (a rename must not silently switch a rule off)."""
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    named = set(FORBIDDEN) | {n for names in FORBIDDEN.values() for n in names}
    assert named - tops <= {"priors"}, sorted(named - tops)
