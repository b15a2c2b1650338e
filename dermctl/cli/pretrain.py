"""`dermctl pretrain`: pretrain a backbone with a self-supervised method (colorme, simclr, byol, dino, ibot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dermctl.cli.common import (
    emit,
    get_state,
    handle_errors,
    log,
    make_progress,
    out_console,
    parse_set_options,
)
from dermctl.cli.options import DeviceOption, LegacyWorkersOption, WorkersOption, pick_workers
from dermctl.errors import UsageError
from dermctl.workspace import RunFolder, read_json

NAME = "pretrain"
SHORT_HELP = "Pretrain a backbone with a self-supervised method (colorme, simclr, byol, dino, ibot)."
HELP = (
    SHORT_HELP
    + "\n\nTrains on the train rows of the --data manifests (labels ignored; val rows, or a seeded 5%, give the "
    "val loss), never on images of the workspace's task manifests or --exclude manifests. Writes "
    "runs/<name>/ (default name <method>-<backbone>): config.json, metrics.csv, run.json, checkpoints/ and "
    "the exported backbone of the best val-loss epoch (backbone.safetensors + backbone.json). Stops early "
    "after --patience epochs without val-loss improvement. Ctrl-C / SIGTERM checkpoint and exit 130; "
    "--resume continues a run exactly (a run killed before its first checkpoint starts afresh); --force "
    "replaces a run folder that no process is using. Config precedence: method defaults < --config < --set < flags; "
    "--print-config shows the result."
)


def _overrides(**flags: Any) -> dict[str, Any]:
    return {k: v for k, v in flags.items() if v is not None}


@handle_errors
def command(
    ctx: typer.Context,
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="colorme, simclr, byol, dino or ibot.")
    ] = None,
    data: Annotated[
        list[Path] | None, typer.Option("--data", "-d", help="Manifest CSV or folder of them (repeatable).")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name (default: <method>-<backbone>).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML config file (flat keys or a pretrain table).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value (repeatable).")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="timm model name (default: the method's).")
    ] = None,
    init: Annotated[
        str | None, typer.Option("--init", help="imagenet, random or a local weights file.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Maximum epochs.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Images per step per process.")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Base learning rate.")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="Crop size in pixels.")] = None,
    patience: Annotated[
        int | None, typer.Option("--patience", help="Early stopping patience (0 = off).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of init, data order and augmentations.")
    ] = None,
    workers: WorkersOption = None,
    num_workers: LegacyWorkersOption = None,
    precision: Annotated[str | None, typer.Option("--precision", help="auto, bf16, fp16 or fp32.")] = None,
    device: DeviceOption = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run from checkpoints/last.pt.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing run folder (not one in use) and start afresh."),
    ] = False,
    exclude: Annotated[
        list[Path] | None,
        typer.Option("--exclude", help="Manifest whose images must not be trained on (repeatable)."),
    ] = None,
    allow_task_images: Annotated[
        bool, typer.Option("--allow-task-images", help="Train on images of evaluation task manifests too.")
    ] = False,
    monitor_task: Annotated[
        str | None, typer.Option("--monitor-task", help="Log kNN macro-F1 on this task during training.")
    ] = None,
    monitor_every: Annotated[
        int | None, typer.Option("--monitor-every", help="Epochs between monitor runs.")
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", help="Print the resolved config (TOML, or JSON with --json) and exit."
        ),
    ] = False,
) -> None:
    from dermctl.train.config import build_config, source_comments, to_toml
    from dermctl.train.engine import default_run_name, pretrain

    state = get_state(ctx)
    ws = state.workspace
    overrides = parse_set_options(set_ or [])
    overrides.update(
        _overrides(
            backbone=backbone,
            init=init,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            image_size=image_size,
            patience=patience,
            seed=seed,
            num_workers=pick_workers(workers, num_workers),
            precision=precision,
            monitor_task=monitor_task,
            monitor_every=monitor_every,
        )
    )
    cfg = build_config(method, config, overrides)
    if print_config:
        if state.json:
            emit(state, cfg)
        else:
            text = to_toml(cfg, source_comments(cfg))
            out_console.print(text, end="", highlight=False, markup=False, soft_wrap=True)
        return
    if not data:
        raise UsageError("--data: missing (give a manifest CSV or a folder of them)")
    run_name = name or default_run_name(cfg)
    saved = RunFolder.pretraining(ws.runs / run_name).config
    if resume and force:
        raise UsageError("--resume and --force: choose one (continue the run, or replace it)")
    if resume and saved.is_file():
        # A resumed run starts from its own config; explicit options must agree with it (checked by the engine).
        cfg = build_config(method, config, overrides, base=read_json(saved).get("config", {}))

    progress = make_progress(state)
    task_id = progress.add_task("pretrain", total=None)

    def on_step(u: Any) -> None:
        progress.update(
            task_id,
            total=u.batches,
            completed=u.batch,
            description=(
                f"epoch {u.epoch}/{u.epochs} loss {u.loss:.4f} {u.images_per_s:.1f} img/s wait {u.data_wait_share:.0%}"
            ),
        )

    with progress:
        summary = pretrain(
            cfg,
            list(data),
            ws,
            name=run_name,
            resume=resume,
            force=force,
            exclude=list(exclude or []),
            allow_task_images=allow_task_images,
            progress=on_step,
            log=lambda m: log(state, m),
            device=device,
        )
    from dermctl.runtime.distributed import end_process_group

    if end_process_group() not in (None, 0):  # started by torchrun: only the main process prints
        return
    result = summary.to_json()

    def render() -> None:
        best = f"{summary.best_val_loss:.4f}" if summary.best_val_loss is not None else "n/a"
        out_console.print(
            f"run {summary.name}: {summary.status} after {summary.epochs_run} epochs; best epoch {summary.best_epoch} "
            f"(val loss {best}); {summary.train_images} train / {summary.val_images} val images, "
            f"{summary.excluded} task images excluded",
            highlight=False,
        )
        if summary.backbone:
            out_console.print(
                f"backbone (epoch {summary.exported_epoch}): {summary.backbone}", highlight=False
            )
        for w in summary.warnings:
            out_console.print(f"warning: {w}", style="yellow", highlight=False)

    emit(state, result, render)
