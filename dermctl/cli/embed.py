"""`dermctl embed`: extract frozen features of task images into embeddings/<model>/<task>.h5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dermctl.cli.common import emit, get_state, handle_errors, make_progress, out_console
from dermctl.cli.options import DeviceOption, WorkersOption

NAME = "embed"
SHORT_HELP = "Extract frozen features of task images into embeddings/<model>/<task>.h5."
HELP = (
    SHORT_HELP
    + "\n\n--model is a run name (runs/<name>/backbone.json), an exported backbone folder or file, "
    "'imagenet' (timm weights of --backbone; --weights FILE offline) or 'random'. Images are resized to "
    "image_size/0.875 (bicubic), centre-cropped and normalised; features follow the backbone's rule "
    "(ResNet: average pool; ViT: class tokens of the last 4 blocks). An up-to-date file (same manifest, "
    "checkpoint, feature rule and image size) is reused; --force rebuilds it."
)


@handle_errors
def command(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Run name, backbone folder/file, imagenet or random.")
    ],
    task: Annotated[
        list[str] | None,
        typer.Option("--task", "-t", help="Task name or manifest CSV (repeatable; default: every task)."),
    ] = None,
    backbone: Annotated[
        str | None, typer.Option("--backbone", help="timm model for imagenet/random (default resnet50).")
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Local ImageNet weights file for --model imagenet (offline)."),
    ] = None,
    feature_rule: Annotated[
        str | None,
        typer.Option("--feature-rule", help="avgpool | cls4 | cls | cls4+avgpool (default: the model's)."),
    ] = None,
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Crop size (default: the model's, 224).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    device: DeviceOption = "auto",
    workers: WorkersOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild even when an up-to-date file exists.")
    ] = False,
) -> None:
    from dermctl.eval.embed import embed

    state = get_state(ctx)
    with make_progress(state) as progress:
        bars: dict[str, int] = {}

        def on_progress(task_name: str, done: int, total: int) -> None:
            if task_name not in bars:
                bars[task_name] = progress.add_task(f"embed {task_name}", total=total)
            progress.update(bars[task_name], completed=done)

        outcomes = embed(
            state.workspace,
            model,
            task or None,
            backbone,
            weights,
            feature_rule,
            image_size,
            batch_size,
            device,
            -1 if workers is None else workers,
            force,
            on_progress,
        )
    from dermctl.runtime.distributed import end_process_group

    if end_process_group() not in (None, 0):  # started by torchrun: only the main process prints
        return
    data = [
        {
            "task": o.task,
            "path": str(o.path),
            "status": o.status,
            "n": o.n,
            "dim": o.dim,
            "seconds": round(o.seconds, 3),
            "images_per_s": round(o.images_per_s, 1),
        }
        for o in outcomes
    ]

    def render() -> None:
        for d in data:
            rate = f", {d['images_per_s']} images/s" if d["status"] == "written" else ""
            out_console.print(
                f"{d['status']}: {d['path']} ({d['n']} images x {d['dim']} features{rate})", highlight=False
            )

    emit(state, {"embeddings": data}, render)
