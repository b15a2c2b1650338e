"""`dermctl probe`: linear probe on frozen cached features."""

from __future__ import annotations

from typing import Annotated

import typer

from dermctl.cli.common import emit, get_state, handle_errors, log, make_progress, out_console, parse_csv_list
from dermctl.cli.knn import render_summaries
from dermctl.cli.options import DeviceOption

NAME = "probe"
SHORT_HELP = "Linear probe on frozen cached features."
HELP = (
    SHORT_HELP
    + "\n\nMultinomial logistic regression on standardised features, fitted by full-batch L-BFGS; the L2 "
    "strength is chosen on validation macro-F1 over a log grid, then the test split is scored once. "
    "--shots gives few-shot curves (seeded stratified support sets, --repeats each). "
    "--model stratified runs the stratified random baseline (results/stratified/stratified/<task>.json). "
    "Writes results/linear/<model>/<task>.json."
)


@handle_errors
def command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option("--task", "-t", help="Task name or manifest CSV.")],
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", "-m", help="Model id(s) with embeddings, or 'stratified' (default: all models)."
        ),
    ] = None,
    shots: Annotated[
        str, typer.Option("--shots", help="Images per class, comma-separated; 'all' = whole train.")
    ] = "all",
    repeats: Annotated[int, typer.Option("--repeats", help="Support sets drawn per shot count.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the support-set draws and bootstrap.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing, different result.")] = False,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="honest (default) | paper: scikit-learn's untuned LogisticRegression(), max over repeats "
            "-> results/linear-paper/.",
        ),
    ] = "honest",
    device: DeviceOption = "auto",
) -> None:
    from dermctl.eval.fewshot import parse_shots
    from dermctl.eval.runner import evaluate_probe

    state = get_state(ctx)
    shot_list = parse_shots(shots)
    models = [m for item in (model or []) for m in parse_csv_list("--model", item)]
    with make_progress(state) as progress:
        bar = progress.add_task(f"probe {task}", total=None)
        summaries = evaluate_probe(
            state.workspace,
            task,
            models=models or None,
            shots=shot_list,
            repeats=repeats,
            seed=seed,
            force=force,
            on_step=lambda: progress.update(bar, advance=1),
            log=lambda m: log(state, m),
            protocol=protocol,
            device=device,
        )
    data = [s.__dict__ for s in summaries]
    title = (
        "linear probe"
        if protocol == "honest"
        else "linear as published (optimistic: untuned, max over repeats)"
    )
    emit(state, {"results": data}, lambda: render_summaries(out_console, title, summaries))
