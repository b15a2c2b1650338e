"""`dermctl knn`: few-shot kNN evaluation on cached embeddings (FAISS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dermctl.cli.common import emit, get_state, handle_errors, make_progress, out_console, parse_csv_list
from dermctl.cli.options import DeviceOption

if TYPE_CHECKING:
    from rich.console import Console

NAME = "knn"
SHORT_HELP = "Few-shot kNN evaluation on cached embeddings (FAISS)."
HELP = (
    SHORT_HELP
    + "\n\nDINO's rule: cosine similarity, k nearest training images vote with weight exp(sim/T). For each "
    "shot count, --repeats seeded stratified support sets of that many training images per class are drawn "
    "('all' = the whole training split, once); k is capped at the support size (1 shot x 8 classes: k = 8). "
    "--k auto picks k on the validation split per support set. Writes results/knn/<model>/<task>.json."
)


def parse_k(value: str) -> int | str:
    from dermctl.errors import UsageError

    if value.strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except ValueError:
        raise UsageError(f"--k: {value!r} is not a positive integer or 'auto'") from None
    if k < 1:
        raise UsageError(f"--k: {k} must be at least 1 (or 'auto')")
    return k


def render_summaries(console: Console, protocol: str, summaries: Sequence[Any]) -> None:
    """A table of macro-F1 (%) per model: headline with its 95 % CI, then each curve point's mean ± std."""
    from rich.table import Table

    shots: list[Any] = []
    for s in summaries:
        for p in s.curve:
            if p["shots"] not in shots:
                shots.append(p["shots"])
    table = Table(title=f"{protocol} macro-F1 (%) on {summaries[0].task if summaries else ''}")
    table.add_column("model")
    table.add_column("macro-F1 [95% CI]", justify="right")
    for shot in shots:
        table.add_column(f"{shot} shot" if shot != "all" else "all", justify="right")
    for s in summaries:
        by = {p["shots"]: p for p in s.curve}
        cells = [
            f"{100 * by[x]['macro_f1_mean']:.1f} ± {100 * by[x]['macro_f1_std']:.1f}" if x in by else ""
            for x in shots
        ]
        lo, hi = s.macro_f1_ci
        table.add_row(s.model, f"{100 * s.macro_f1:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]", *cells)
    console.print(table)
    for s in summaries:
        console.print(f"wrote {s.path}", highlight=False)


@handle_errors
def command(
    ctx: typer.Context,
    task: Annotated[str, typer.Option("--task", "-t", help="Task name or manifest CSV.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Model id(s) with embeddings (default: all).")
    ] = None,
    shots: Annotated[
        str, typer.Option("--shots", help="Images per class, comma-separated; 'all' = whole train.")
    ] = "1,5,10,all",
    repeats: Annotated[int, typer.Option("--repeats", help="Support sets drawn per shot count.")] = 10,
    k: Annotated[str, typer.Option("--k", help="Neighbours (capped at the support size), or 'auto'.")] = "20",
    temperature: Annotated[float, typer.Option("--temperature", help="Vote temperature T.")] = 0.07,
    vote: Annotated[str, typer.Option("--vote", help="weighted (exp(sim/T)) | majority.")] = "weighted",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the support-set draws.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing, different result.")] = False,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="honest (default) | paper: the study authors' optimistic rule (uniform votes, k chosen on "
            "test F1, max over repeats) -> results/knn-paper/.",
        ),
    ] = "honest",
    device: DeviceOption = "auto",
) -> None:
    from dermctl.eval.fewshot import parse_shots
    from dermctl.eval.runner import evaluate_knn

    state = get_state(ctx)
    shot_list = parse_shots(shots)
    k_value = parse_k(k)
    if protocol == "paper" and (k_value != 20 or vote != "weighted" or temperature != 0.07):
        from dermctl.errors import UsageError

        raise UsageError(
            "--protocol paper: --k, --vote and --temperature do not apply (it uses uniform votes and picks k "
            "on the test split, as the authors did)"
        )
    models = [m for item in (model or []) for m in parse_csv_list("--model", item)]
    with make_progress(state) as progress:
        bar = progress.add_task(f"knn {task}", total=None)

        def on_step() -> None:
            progress.update(bar, advance=1)

        summaries = evaluate_knn(
            state.workspace,
            task,
            models=models or None,
            shots=shot_list,
            repeats=repeats,
            k=k_value,
            temperature=temperature,
            vote=vote,
            seed=seed,
            force=force,
            on_step=on_step,
            protocol=protocol,
            device=device,
        )
    data = [s.__dict__ for s in summaries]
    title = "knn" if protocol == "honest" else "knn as published (optimistic: k chosen on test)"
    emit(state, {"results": data}, lambda: render_summaries(out_console, title, summaries))
