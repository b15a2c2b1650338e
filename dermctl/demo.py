"""The demo: the whole chain of the study on generated data, in one workspace, in a few minutes on a CPU.

generate (labelled task + unlabelled corpus) -> ingest both -> pretrain a small model -> embed (pretrained,
random, and ImageNet weights when they can be had) -> stratified baseline, kNN few-shot, linear probe,
fine-tuning -> report. Every step calls the same core function as its command; nothing here is special-cased.
ImageNet weights that cannot be fetched or found in the local cache are reported as unavailable with the
reason — that row is never faked.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermctl.data.demo import generate_demo, generate_unlabelled
from dermctl.data.ingest import IngestOptions, run_ingest
from dermctl.data.manifest import read_manifest
from dermctl.errors import ConflictError, UnavailableError, UsageError
from dermctl.eval.baselines import evaluate_stratified
from dermctl.eval.embed import embed
from dermctl.eval.fewshot import ALL
from dermctl.eval.finetune import FinetuneConfig, run_finetune
from dermctl.eval.knn import evaluate_knn
from dermctl.eval.probe import evaluate_probe
from dermctl.methods.base import resolve_config
from dermctl.report import make_report
from dermctl.train.engine import pretrain
from dermctl.workspace import Workspace

TASK = "demo-task"
CORPUS = "demo-corpus"

# Small enough for 2 CPU cores in well under 5 minutes; each key is an ordinary config key of the method.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "dino": {
        "backbone": "vit_tiny_patch16_224",
        "image_size": 32,
        "local_crop_size": 16,
        "local_crops_number": 2,
        "out_dim": 512,
        "hidden_dim": 256,
        "bottleneck_dim": 64,
        "batch_size": 32,
        "warmup_epochs": 1,
        "warmup_teacher_temp_epochs": 0,
        "freeze_last_layer": 0,
        "lr": 1e-3,
        "lr_scaling": "none",
    },
    "simclr": {
        "backbone": "resnet18",
        "init": "random",  # from scratch: the demo shows what pretraining itself adds
        "lr_scaling": "none",
        "image_size": 32,
        "batch_size": 32,
        "lr": 1e-3,
        "proj_hidden_dim": 256,
        "proj_out_dim": 64,
    },
}


@dataclass
class DemoConfig:
    method: str = "dino"
    n_per_class: int = 40
    corpus_size: int = 240
    image_size: int = 64  # generated images; the models see `train_size`
    train_size: int = 32
    pretrain_epochs: int = 4
    finetune_epochs: int = 2
    shots: tuple[Any, ...] = (1, 5, 10, ALL)
    repeats: int = 5
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    bootstrap: int = 200


@dataclass
class DemoSummary:
    workdir: Path
    report: Path | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "report": str(self.report) if self.report else None,
            "steps": self.steps,
            "unavailable": self.unavailable,
        }


def _demo_outputs(ws: Workspace) -> list[Path]:
    return [
        p for p in (ws.root / "demo-data", ws.manifests / f"{TASK}.csv", ws.results, ws.runs) if p.exists()
    ]


def run_demo(
    workspace: Workspace, config: DemoConfig, *, force: bool = False, log: Callable[[str], None] | None = None
) -> DemoSummary:
    """Run the chain; refuses to touch a workspace that already holds results unless `force`."""
    say = log or (lambda _m: None)
    if config.method not in TINY_OVERRIDES:
        raise UsageError(
            f"--method: the demo knows {', '.join(sorted(TINY_OVERRIDES))}, not {config.method!r}"
        )
    existing = _demo_outputs(workspace)
    if existing and not force:
        raise ConflictError(
            f"{workspace.root} already holds demo output ({existing[0].name}); pass --force to redo the demo there"
        )
    if force:
        # Only what the demo itself made is removed: its data, its runs and the derived outputs.
        for path in (
            workspace.root / "demo-data",
            workspace.results,
            workspace.embeddings,
            workspace.reports,
        ):
            shutil.rmtree(path, ignore_errors=True)
        for run in workspace.runs.glob("demo-*"):
            shutil.rmtree(run, ignore_errors=True)
        for run in workspace.runs.glob("finetune-*"):
            shutil.rmtree(run, ignore_errors=True)
    workspace.ensure()
    summary = DemoSummary(workdir=workspace.root, report=None)

    def step(name: str, fn: Callable[[], Any]) -> Any:
        say(f"[bold]demo[/] {name} …")
        t0 = time.perf_counter()
        out = fn()
        summary.steps.append({"step": name, "seconds": round(time.perf_counter() - t0, 2)})
        return out

    data = workspace.root / "demo-data"
    step(
        "generate data",
        lambda: (
            generate_demo(
                data / "task", n_per_class=config.n_per_class, size=config.image_size, seed=config.seed
            ),
            generate_unlabelled(
                data / "corpus", n=config.corpus_size, size=config.image_size, seed=config.seed + 1
            ),
        ),
    )
    common = dict(seed=config.seed, workers=1, force=force)
    step(
        "ingest",
        lambda: (
            run_ingest(
                "csv",
                data / "task",
                workspace,
                IngestOptions(name=TASK, label_column="label", group_column="patient_id", **common),
            ),
            run_ingest(
                "folder", data / "corpus", workspace, IngestOptions(name=CORPUS, role="corpus", **common)
            ),
        ),
    )

    overrides = dict(TINY_OVERRIDES[config.method])
    overrides.update(
        epochs=config.pretrain_epochs,
        image_size=config.train_size,
        seed=config.seed,
        num_workers=config.num_workers,
    )
    cfg = resolve_config(config.method, overrides)
    run_name = f"demo-{config.method}"
    run = step(
        f"pretrain {config.method}",
        lambda: pretrain(
            cfg, [workspace.manifests / f"{CORPUS}.csv"], workspace, name=run_name, device=config.device
        ),
    )
    backbone = cfg["backbone"]

    models: list[str] = []
    embed_kw = dict(
        tasks=[TASK], image_size=config.train_size, device=config.device, num_workers=config.num_workers
    )
    for spec in (run.name, "random", "imagenet"):
        try:
            outcome = step(
                f"embed {spec}", lambda spec=spec: embed(workspace, spec, backbone=backbone, **embed_kw)
            )
        except UnavailableError as exc:
            summary.unavailable[f"imagenet-{backbone}"] = exc.message
            say(f"[yellow]demo[/] ImageNet row unavailable: {exc.message}")
            continue
        models.append(outcome[0].path.parent.name)

    manifest = workspace.manifests / f"{TASK}.csv"
    smallest = min(read_manifest(manifest).counts()["train"].values())
    shots = tuple(s for s in config.shots if s == ALL or s <= smallest)  # a smaller demo keeps what fits
    step(
        "stratified baseline", lambda: evaluate_stratified(workspace, manifest, seed=config.seed, force=force)
    )
    step(
        "knn",
        lambda: evaluate_knn(
            workspace,
            TASK,
            models,
            shots=shots,
            repeats=config.repeats,
            seed=config.seed,
            bootstrap=config.bootstrap,
            force=force,
        ),
    )
    step(
        "linear probe",
        lambda: evaluate_probe(
            workspace, TASK, models, seed=config.seed, bootstrap=config.bootstrap, force=force
        ),
    )
    ft = FinetuneConfig(
        epochs=config.finetune_epochs,
        batch_size=32,
        image_size=config.train_size,
        seed=config.seed,
        device=config.device,
        num_workers=config.num_workers,
        bootstrap=config.bootstrap,
    )
    for spec in (run.name, "random"):
        step(
            f"finetune {spec}",
            lambda spec=spec: run_finetune(workspace, TASK, spec, ft, backbone=backbone, force=force),
        )
    report = step(
        "report", lambda: make_report(workspace.results, workspace.reports, runs_dir=workspace.runs)
    )
    summary.report = report.written.get("html") or next(iter(report.written.values()), None)
    return summary
