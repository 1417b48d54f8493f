"""The floors of the package (docs/ARCHITECTURE.md) and its size limits, read from the source with ``ast``.

- dependencies point down: nothing below ``steps`` imports ``steps`` or the CLI; models, nn and samplers never
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


# floor -> first-level names it must never import
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


def test_floor_table_names_real_packages() -> None:
    """The table above names packages that exist (a rename must not silently switch a rule off)."""
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES}
    named = set(FORBIDDEN) | {n for names in FORBIDDEN.values() for n in names}
    assert named - tops <= {"priors"}, sorted(named - tops)
