"""What every ``medgen`` command shares on the terminal: the consoles, error handling (one red sentence and
the README's exit code, a traceback only with ``-v``), progress bars and tables.

Part of the CLI layer (``medgen_cli.cli``), the only package that imports typer.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from ..errors import MedgenError, StepFailed, os_error_sentence

console = Console(stderr=True)
out_console = Console()

EXIT_FAILED = StepFailed.exit_code
MAX_MESSAGE = 2000  # characters of an error message printed (a message quoting a huge value stays readable)

state: dict[str, bool] = {"verbose": False, "quiet": False}  # set by the app's callback (-v, -q)


@contextmanager
def handled() -> Iterator[None]:
    """Turn every error into one red sentence and the README's exit code (a traceback only with -v).

    UsageError (settings, flags, input artefacts) -> 2; StepFailed, OS errors (a full disk, a
    permission), memory and anything unexpected -> 1.
    """
    try:
        yield
    except typer.Exit:
        raise
    except MedgenError as err:
        _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted; run the same command again to resume (training steps need --resume)", EXIT_FAILED)
    except OSError as err:
        _debug_traceback()
        _fail(os_error_sentence(err), EXIT_FAILED)
    except MemoryError:
        _debug_traceback()
        _fail("out of memory; lower the batch size (or data.patch_size) or free memory, then run the same command again",
              EXIT_FAILED)
    except Exception as err:  # noqa: BLE001 - the last line of defence: no traceback unless -v
        _debug_traceback()
        _fail(f"{type(err).__name__}: {err} (re-run with -v for the traceback)", EXIT_FAILED)


def _debug_traceback() -> None:
    if state["verbose"]:
        console.print_exception()


def _fail(message: str, code: int) -> None:
    message = " ".join(str(message).split())
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    text = Text("error: ", style="bold red")
    text.append(message)  # plain text: a bracket in a path or value is never read as rich markup
    console.print(text, highlight=False, soft_wrap=True)  # no newlines inside paths: they stay copyable
    raise typer.Exit(code)


@contextmanager
def progress_bar(description: str) -> Iterator[Any]:
    """A rich progress bar; yields ``update(done, total, text)`` (silent with -q)."""
    if state["quiet"]:
        yield lambda done, total, text="": None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[text]}", markup=False),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, text="")

        def update(done: int, total: int, text: str = "") -> None:
            bar.update(task, completed=done, total=total, text=text)

        yield update


def print_table(title: str, columns: tuple[str, ...], rows) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    out_console.print(table)
