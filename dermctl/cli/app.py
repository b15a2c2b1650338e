"""The `dermctl` Typer application: global options and one sub-command per module."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dermctl import __version__
from dermctl.cli import completion, demo, embed, finetune, ingest, knn, pretrain, probe, report
from dermctl.cli.common import State
from dermctl.cli.shell import DermctlCommand, DermctlGroup
from dermctl.runtime.process import end_process, exit_code

app = typer.Typer(
    name="dermctl",
    cls=DermctlGroup,
    help=(
        "Self-supervised pretraining and label-efficient evaluation for dermatology images.\n\n"
        "Typical chain: ingest -> pretrain -> embed -> knn / probe / finetune -> report. "
        "`dermctl demo` runs it all on generated data."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dermctl {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    ctx: typer.Context,
    workdir: Annotated[
        Path,
        typer.Option(
            "--workdir",
            "-C",
            envvar="DERMCTL_WORKDIR",
            help="Workspace folder holding manifests/, runs/, embeddings/, results/, reports/.",
            file_okay=False,
        ),
    ] = Path("."),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = State(workdir=workdir, quiet=quiet, json=json_out)


for _module in (ingest, pretrain, embed, knn, probe, finetune, report, demo):
    app.command(
        _module.NAME,
        cls=DermctlCommand,
        help=_module.HELP,
        short_help=_module.SHORT_HELP,
        no_args_is_help=False,
    )(_module.command)


def main() -> None:
    # torchrun starts `python -m dermctl`; keep thread oversubscription in check per process.
    os.environ.setdefault("KMP_DUPLICATE_LIB_OK", "TRUE")
    completion.init()
    try:
        app(prog_name="dermctl")
        code = 0
    except SystemExit as exc:  # every command ends here (DermctlGroup.main exits with the status)
        code = exit_code(exc)
    end_process(code)  # threads joined, atexit run, output flushed; no interpreter teardown
