"""The typer app of ``medgen``, its global options (-v, -q, --version) and the options every step shares.

The subcommands register themselves on `app` in `medgen_cli.cli.pipeline` and `medgen_cli.cli.tools`;
``medgen_cli.cli`` imports both, in the order ``medgen --help`` lists them.
"""

from __future__ import annotations

import logging

import typer
from rich.logging import RichHandler

from .. import __version__
from ..errors import UsageError
from ._ui import console, out_console, state

app = typer.Typer(
    name="medgen",
    help="Train generative models of medical images and sample new ones.\n\n"
    "Steps chain through artefact directories: preprocess -> train-ae -> encode-latents -> train-prior -> sample.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Show default settings or check a settings file.", no_args_is_help=True)
app.add_typer(config_app, name="config")

log = logging.getLogger("medgen_cli")


def _version(value: bool) -> None:
    if value:
        out_console.print(f"medgen {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug messages and tracebacks."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors; no progress bars."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("medgen_cli")
    root.handlers[:] = [RichHandler(console=console, show_time=False, show_path=verbose, markup=False)]
    root.setLevel(level)
    root.propagate = False
    state["verbose"], state["quiet"] = verbose, quiet
    from ..train.allocator import tune_allocator

    tune_allocator()  # keep freed tensor memory for reuse (see medgen_cli/train/allocator.py)


CONFIG_OPT = typer.Option(None, "--config", "-c", help="Settings file (YAML, JSON or TOML); `medgen config show STEP` prints one.")
SET_OPT = typer.Option([], "--set", "-s", help="Override one setting: key.path=value (repeatable).")
OVERWRITE_OPT = typer.Option(False, "--overwrite", help="Replace the output directory if it exists.")
STEPS_OPT = typer.Option(None, "--steps", help="Optimizer steps.")
MAX_MINUTES_OPT = typer.Option(None, "--max-minutes", help="Wall-clock budget; stops at --steps or this, whichever comes first.")
DEVICE_OPT = typer.Option(None, "--device", help="auto, cpu, cuda or mps.")
RESUME_OPT = typer.Option(False, "--resume", help="Continue an interrupted run from OUT.partial's last checkpoint.")
THREADS_OPT = typer.Option(None, "--threads", min=0, help="CPU threads of this step (runtime.threads; default 0 = one per physical core). "
                           "--threads 1 keeps a step steady on a machine other work shares.")
OUT_OPT_HELP = "Output artefact directory or fsspec URL (s3://bucket/run/name)."
DEVICE_HELP = "auto, cpu, cuda or mps."


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard I/N`` -> (I, N); a malformed value is a `UsageError`."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text[:40]!r} must look like I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UsageError(f"--shard {text!r} needs 0 <= I < N (shards are numbered from 0), e.g. 0/4 ... 3/4")
    return i, n


def main() -> None:
    app()
