"""`dermctl knn`: few-shot kNN evaluation on cached embeddings (FAISS)."""

from __future__ import annotations

import typer

from dermctl.cli.common import handle_errors, not_built

NAME = "knn"
SHORT_HELP = "Few-shot kNN evaluation on cached embeddings (FAISS)."
HELP = SHORT_HELP + "\n\nNot built yet: this command exits with an error."


@handle_errors
def command(ctx: typer.Context) -> None:
    not_built(NAME, "evaluation issue")
