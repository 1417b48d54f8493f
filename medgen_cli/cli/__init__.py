"""The ``medgen`` command line: one short function per subcommand; the only package that imports typer.

Each command loads settings (defaults -> --config -> --set -> flags), calls ``steps.<step>.run``
and turns known errors into one clear sentence and an exit code: 0 success, 1 the step failed
(e.g. some inputs were bad: they are named), 2 usage or settings error.

- `app`: the typer app, its global options and the options the steps share (``app.py``);
- ``_ui.py``: consoles, error handling (`handled`), progress bars and tables;
- ``pipeline.py``: preprocess, train-ae, encode-latents, train-prior, sample;
- ``tools.py``: evaluate, export, inspect, config show|validate.

Run it as ``medgen``, ``python -m medgen_cli`` or ``python -m medgen_cli.cli`` (what torchrun uses).
"""

from __future__ import annotations

from . import pipeline, tools  # noqa: F401 - registers the subcommands on `app`, in the order --help lists them
from .app import app, main

__all__ = ["app", "main"]
