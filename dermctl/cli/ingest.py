"""`dermctl ingest`: read a data set in its published layout and write a clean, split, de-duplicated manifest."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "ingest"
SHORT_HELP = "Read a data set in its published layout and write a clean, split, de-duplicated manifest."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "foundation issue")
