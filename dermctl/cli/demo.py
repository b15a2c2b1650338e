"""`dermctl demo`: the whole chain on generated data, ending with the report."""

from __future__ import annotations

from typing import Annotated

import typer

from dermctl.cli.common import emit, err_console, get_state, handle_errors, log, out_console

NAME = "demo"
SHORT_HELP = "Run the whole chain on generated demo data and print where the report is."
HELP = (
    SHORT_HELP
    + "\n\nGenerates a small labelled derm-like task and an unlabelled corpus under <workdir>/demo-data, ingests "
    "both, pretrains a small model for a few epochs, embeds the task with the pretrained, random and (when they can "
    "be had offline or online) ImageNet weights, runs the stratified baseline, kNN few-shot, the linear probe and "
    "fine-tuning, and writes the report to <workdir>/reports/. Finishes in a few minutes on 2 CPU cores."
)


@handle_errors
def command(
    ctx: typer.Context,
    method: Annotated[
        str, typer.Option("--method", help="Pretraining method of the demo: dino or simclr.")
    ] = "dino",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Pretraining epochs.")] = 4,
    per_class: Annotated[int, typer.Option("--per-class", min=10, help="Labelled images per class.")] = 40,
    corpus_size: Annotated[
        int, typer.Option("--corpus-size", min=20, help="Unlabelled corpus images.")
    ] = 240,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, splits, training and evaluation.")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Redo the demo in a workdir that already holds one.")
    ] = False,
) -> None:
    from dermctl.demo import DemoConfig, run_demo

    state = get_state(ctx)
    config = DemoConfig(
        method=method,
        pretrain_epochs=epochs,
        n_per_class=per_class,
        corpus_size=corpus_size,
        seed=seed,
        device=device,
    )
    summary = run_demo(state.workspace, config, force=force, log=lambda m: log(state, m))

    def render() -> None:
        for name, reason in summary.unavailable.items():
            err_console.print(f"[yellow]unavailable:[/] {name}: {reason}", highlight=False)
        total = sum(s["seconds"] for s in summary.steps)
        out_console.print(f"demo finished in {total:.0f} s; report: {summary.report}", highlight=False)

    emit(state, summary.to_json(), render)
