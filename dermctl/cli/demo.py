"""`dermctl demo`: run the whole chain on generated demo data and print where the report is."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "demo"
SHORT_HELP = "Run the whole chain on generated demo data and print where the report is."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
