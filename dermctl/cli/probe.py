"""`dermctl probe`: linear probe on frozen cached features."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "probe"
SHORT_HELP = "Linear probe on frozen cached features."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
