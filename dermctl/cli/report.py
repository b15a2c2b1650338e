"""`dermctl report`: collect results into the paper's Table 2 and Figure 1 (Markdown, CSV, LaTeX, PNG, SVG, HTML)."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "report"
SHORT_HELP = "Collect results into the paper's Table 2 and Figure 1 (Markdown, CSV, LaTeX, PNG, SVG, HTML)."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
