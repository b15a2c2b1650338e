"""`dermctl demo`: the whole chain on generated data, ending with the report."""

from __future__ import annotations

from typing import Annotated

import typer

from dermctl.cli.common import emit, err_console, get_state, handle_errors, log, out_console
from dermctl.cli.options import DeviceOption, WorkersOption

NAME = "demo"
SHORT_HELP = "Run the whole chain on generated demo data and print where the report is."
HELP = (
    SHORT_HELP
    + "\n\nGenerates a labelled derm-like task (classes differ in lesion morphology; skin tone I-VI, lighting, "
    "scale, rotation and hairs vary and carry no label) and a larger unlabelled corpus under <workdir>/demo-data, "
    "ingests both, pretrains a small model from random init (SimCLR, ResNet-18 at 32 px), embeds the task with the "
    "pretrained, random and (when they can be had offline or online) ImageNet weights, runs the stratified "
    "baseline, kNN few-shot, the linear probe and fine-tuning, writes the report to <workdir>/reports/ and prints "
    "a one-paragraph verdict (also under --json). About 5 minutes on 2 CPU cores."
)


@handle_errors
def command(
    ctx: typer.Context,
    method: Annotated[
        str, typer.Option("--method", help="Pretraining method of the demo: simclr or dino.")
    ] = "simclr",  # defaults: DemoConfig's (a test keeps them in step; importing it here would load torch)
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Pretraining epochs.")] = 10,
    per_class: Annotated[int, typer.Option("--per-class", min=10, help="Labelled images per class.")] = 250,
    corpus_size: Annotated[
        int, typer.Option("--corpus-size", min=20, help="Unlabelled corpus images.")
    ] = 1500,
    seed: Annotated[int, typer.Option("--seed", help="Seed of data, splits, training and evaluation.")] = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
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
        num_workers=-1 if workers is None else workers,
    )
    summary = run_demo(state.workspace, config, force=force, log=lambda m: log(state, m))

    def render() -> None:
        for name, reason in summary.unavailable.items():
            err_console.print(f"[yellow]unavailable:[/] {name}: {reason}", highlight=False)
        total = sum(s["seconds"] for s in summary.steps)
        out_console.print(summary.verdict, highlight=False)
        out_console.print(f"demo finished in {total:.0f} s; report: {summary.report}", highlight=False)

    emit(state, summary.to_json(), render)
