"""`dermctl embed`: extract frozen features of task images into embeddings/<model>/<task>.h5."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "embed"
SHORT_HELP = "Extract frozen features of task images into embeddings/<model>/<task>.h5."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
