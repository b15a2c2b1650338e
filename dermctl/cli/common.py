"""What every command shares: global state, one-line errors with exit codes, output, progress."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions

from dermctl.errors import (
    EXIT_DISK_FULL,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    DermctlError,
    UsageError,
)
from dermctl.workspace import Workspace, check_writable, disk_full, is_disk_full

if TYPE_CHECKING:
    from rich.progress import Progress

# Wide enough that no line of ours is ever wrapped; tables still take only their natural width.
UNWRAPPED_WIDTH = 100_000


class _Console(Console):
    """A rich Console that wraps lines only on a terminal.

    Piped or redirected (a file, `| grep`, a CI log), a line is printed whole: a path must stay one line
    that a script can cut out. Whether the output is a terminal is asked at each print, so that a console
    made at import time follows a redirected sys.stdout / sys.stderr."""

    def __init__(self, *args: Any, width: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, width=width, **kwargs)
        # rich takes an exported COLUMNS as a fixed width (pytest-xdist workers and some shells export 80):
        # only a width given here is fixed; otherwise a terminal's own size, or no wrapping off a terminal.
        self._given_width = width

    @property
    def size(self) -> ConsoleDimensions:
        if self._given_width is None and not self.is_terminal:
            return ConsoleDimensions(UNWRAPPED_WIDTH, super().size.height)
        return super().size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


# Logs and progress go to stderr so that stdout carries only results (and only JSON under --json).
err_console: Console = _Console(stderr=True)
out_console: Console = _Console()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class State:
    workdir: Path
    quiet: bool = False
    json: bool = False

    @property
    def workspace(self) -> Workspace:
        return Workspace.at(self.workdir)


def get_state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if isinstance(obj, State):
        return obj
    return State(workdir=Path("."))


def handle_errors(fn: F) -> F:
    """Turn library errors into `error: <one line>` on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            _require_writable_workspace(args, kwargs)
            return fn(*args, **kwargs)
        except DermctlError as exc:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: one line, the exit code for bugs, the traceback only on request
            if is_disk_full(exc):  # a full disk outside dermctl's own writers (a library's temp file, ...)
                where = getattr(exc, "filename", None) or "a file being written"
                err_console.print(f"[bold red]error:[/] {disk_full(where, exc).message}", highlight=False)
                raise typer.Exit(EXIT_DISK_FULL) from None
            if _debug():
                raise
            err_console.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {exc} (set DERMCTL_DEBUG=1 for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def _require_writable_workspace(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # Every command writes under the workdir; refuse a read-only one before any work (exit 3), except
    # where the command only prints (--print-config).
    if kwargs.get("print_config"):
        return
    # Typer may hand over its vendored click's Context: recognise it by what get_state uses.
    ctx = kwargs.get("ctx", args[0] if args else None)
    if hasattr(ctx, "find_root"):
        check_writable(get_state(ctx).workdir)  # type: ignore[arg-type]


def _debug() -> bool:
    import os

    return os.environ.get("DERMCTL_DEBUG", "") not in ("", "0")


def emit(state: State, data: Any, render: Callable[[], None] | None = None) -> None:
    """Print a result: JSON on stdout under --json, else `render()` (or nothing when --quiet)."""
    if state.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        sys.stdout.flush()
    elif render is not None and not state.quiet:
        render()


def log(state: State, message: str) -> None:
    """A progress/log line on stderr (silent under --quiet or --json)."""
    if not state.quiet and not state.json:
        err_console.print(message, highlight=False)


def make_progress(state: State) -> Progress:
    """A rich progress bar on stderr, disabled under --quiet / --json and when stderr is not a terminal
    (a log file would get nothing from it but a stray empty line)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=state.quiet or state.json or not err_console.is_terminal,
        transient=True,
    )


def parse_csv_list(option: str, value: str | None) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")]
    if any(not v for v in items):
        raise UsageError(f"{option}: empty item in {value!r} (expected a comma-separated list)")
    return items


def parse_set_options(values: Iterable[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as JSON when they are (numbers, true/false, lists), else text."""
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise UsageError(f"--set: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
