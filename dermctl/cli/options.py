"""Options that several commands take, defined once: one spelling, one help text, the same values.

`--device` and `--workers` resolve through `dermctl.runtime.device`; `--num-workers`, pretrain's and
finetune's spelling in 0.1.0, is still accepted (hidden from help) with a note on stderr."""

from __future__ import annotations

from typing import Annotated

import typer

from dermctl.errors import UsageError

DeviceOption = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto, cpu, cuda or cuda:N (under torchrun each process takes its own GPU).",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", min=-1, help="Image-loading processes (-1: one per spare core) [default: -1]."),
]
LegacyWorkersOption = Annotated[
    int | None, typer.Option("--num-workers", hidden=True, help="Old spelling of --workers.")
]


def pick_workers(workers: int | None, legacy: int | None) -> int | None:
    """The value of --workers, or of its old spelling --num-workers; both at once is a usage error."""
    if workers is not None and legacy is not None:
        raise UsageError("--workers and --num-workers are the same option: give it once (--workers)")
    if legacy is not None:
        typer.echo("note: --num-workers is now spelled --workers", err=True)
        return legacy
    return workers
