"""`dermctl finetune`: fine-tune a backbone with a linear head on a labelled task."""

from __future__ import annotations

from typing import Annotated

import typer

from dermctl.cli.common import emit, get_state, handle_errors, log, out_console
from dermctl.cli.options import DeviceOption, LegacyWorkersOption, WorkersOption, pick_workers

NAME = "finetune"
SHORT_HELP = "Fine-tune a backbone with a linear head on a labelled task."
HELP = (
    SHORT_HELP
    + "\n\nBackbone and head are trained together (Gröger et al., Table 2 'fine-tuned'): AdamW, cosine lr, "
    "RandomResizedCrop(scale 0.5-1) + flips + 90-degree rotations + mild colour jitter, bf16 on CUDA. "
    "The epoch with the best val macro-F1 (or val loss) is evaluated once on the test split.\n\n"
    "Writes results/finetune/<model>/<task>.json and runs/finetune-<model>-<task>/ "
    "(config.json, metrics.csv, last.pt, best.pt, each checkpoint with its .sha256). One process per run: "
    "another is told the PID that holds it.\n\n"
    "Example: dermctl finetune --task ham10000 --model runs/ibot-vit"
)


@handle_errors
def command(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option("--task", "-t", help="Task name in manifests/ or a manifest CSV path.")
    ],
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Run name/folder, exported backbone, `imagenet` or `random`."),
    ],
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="timm name for `imagenet` / `random` models.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="Local weights file for `imagenet`.")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs.")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Backbone learning rate.")] = 1e-4,
    head_lr: Annotated[float, typer.Option("--head-lr", help="Linear head learning rate.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")] = 0.05,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Input size in pixels [default: the backbone's, 224].")
    ] = None,
    class_balanced: Annotated[
        bool, typer.Option("--class-balanced", help="Weight cross-entropy by inverse train class frequency.")
    ] = False,
    early_stop: Annotated[
        str, typer.Option("--early-stop", help="Early-stopping signal: f1 (val macro-F1) or loss.")
    ] = "f1",
    patience: Annotated[
        int, typer.Option("--patience", help="Epochs without val improvement before stopping.")
    ] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of head init, shuffling and augmentations.")] = 0,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    num_workers: LegacyWorkersOption = None,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Bootstrap resamples for confidence intervals.")
    ] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from runs/.../last.pt.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Restart and replace an existing run and result.")
    ] = False,
) -> None:
    from dermctl.train.finetune import FinetuneConfig, run_finetune  # torch: not for --help or TAB

    state = get_state(ctx)
    n_workers = pick_workers(workers, num_workers)
    config = FinetuneConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        weight_decay=weight_decay,
        image_size=image_size,
        class_balanced=class_balanced,
        early_stop=early_stop,
        patience=patience,
        seed=seed,
        device=device,
        num_workers=-1 if n_workers is None else n_workers,
        bootstrap=bootstrap,
    )
    outcome = run_finetune(
        state.workspace,
        task,
        model,
        config,
        backbone=backbone,
        weights=weights,
        resume=resume,
        force=force,
        log=lambda message: log(state, message),
    )
    from dermctl.runtime.distributed import end_process_group

    if end_process_group() not in (None, 0):  # started by torchrun: only the main process prints
        return
    metrics = outcome.payload["metrics"]
    summary = {
        "result": str(outcome.result_path),
        "run": str(outcome.run_dir),
        "model": outcome.payload["model"],
        "task": outcome.payload["task"],
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.epochs_run,
        "stopped_early": outcome.stopped_early,
        "metrics": metrics,
    }

    def render() -> None:
        from rich.table import Table

        table = Table(title=f"fine-tuned {summary['model']} on {summary['task']} (test)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        lo, hi = metrics["macro_f1_ci"]
        table.add_row("macro-F1", f"{100 * metrics['macro_f1']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]")
        table.add_row("balanced accuracy", f"{100 * metrics['balanced_accuracy']:.1f}")
        if metrics.get("auroc_ovr") is not None:
            table.add_row("AUROC (OvR)", f"{metrics['auroc_ovr']:.3f}")
        table.add_row("best epoch", f"{outcome.best_epoch} of {outcome.epochs_run}")
        out_console.print(table)
        out_console.print(f"result: {outcome.result_path}", highlight=False)

    emit(state, summary, render)
