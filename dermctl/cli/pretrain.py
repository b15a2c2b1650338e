"""`dermctl pretrain`: pretrain a backbone with a self-supervised method (colorme, simclr, byol, dino, ibot)."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "pretrain"
SHORT_HELP = "Pretrain a backbone with a self-supervised method (colorme, simclr, byol, dino, ibot)."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "pretraining issue")
