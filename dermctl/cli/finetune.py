"""`dermctl finetune`: fine-tune a backbone with a linear head on a labelled task."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "finetune"
SHORT_HELP = "Fine-tune a backbone with a linear head on a labelled task."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
