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
from dermctl.eval.embed import embed
from dermctl.eval.fewshot import ALL
from dermctl.eval.runner import EvalSummary, evaluate_knn, evaluate_probe, evaluate_stratified
from dermctl.methods.registry import resolve_config
from dermctl.report import make_report
from dermctl.train.engine import pretrain
from dermctl.train.finetune import FinetuneConfig, run_finetune
from dermctl.workspace import Workspace

TASK = "demo-task"
CORPUS = "demo-corpus"

# The recipe of each method, as ordinary config keys (`--set key=value` of `dermctl pretrain`). Small enough
# for 2 CPU cores; init random: the demo shows what pretraining on the unlabelled corpus itself adds.
TINY_OVERRIDES: dict[str, dict[str, Any]] = {
    "simclr": {
        "backbone": "resnet18",
        "init": "random",
        "image_size": 32,
        "batch_size": 32,  # more steps per epoch: on 2 cores the step count, not the batch, limits learning
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_scaling": "none",
        "lr_schedule": "none",  # a cosine over a few hundred steps decays before the loss leaves log(2N-1)
        "weight_decay": 0.0,
        "temperature": 0.2,
        "proj_hidden_dim": 512,
        "proj_out_dim": 128,
        # Crops of at least 70 % of the photo keep the whole lesion in both views, and half-strength colour
        # jitter (brightness 0.4, hue 0.1) plus grayscale still spans the skin tones and lighting; blur
        # (which the authors always apply) would erase the 1-2 px patterns that tell the classes apart at 32 px.
        "crop_scale_min": 0.7,
        "color_strength": 0.5,
        "blur_p": 0.0,
    },
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
}


@dataclass
class DemoConfig:
    method: str = "simclr"
    n_per_class: int = 250  # labelled images per class
    corpus_size: int = 1500  # unlabelled pretraining images
    test_fraction: float = (
        0.3  # a test split of hundreds of images, so that the intervals can separate models
    )
    image_size: int = 64  # generated images; the models see `train_size`
    train_size: int = 32
    pretrain_epochs: int = 10
    finetune_epochs: int = 2
    finetune_lr: float = 1e-3  # backbone lr; the head's is the FinetuneConfig default
    shots: tuple[Any, ...] = (1, 5, 10, ALL)
    repeats: int = 5
    seed: int = 0
    device: str = "auto"
    num_workers: int = -1  # one loader worker per spare core: decoding overlaps the steps
    bootstrap: int = 200


@dataclass
class DemoSummary:
    workdir: Path
    report: Path | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    verdict: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "report": str(self.report) if self.report else None,
            "steps": self.steps,
            "unavailable": self.unavailable,
            "figures": self.figures,
            "verdict": self.verdict,
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
                IngestOptions(
                    name=TASK,
                    label_column="label",
                    group_column="patient_id",
                    test_fraction=config.test_fraction,
                    **common,
                ),
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
    imagenet_id = f"imagenet-{backbone}"
    embed_kw = dict(
        tasks=[TASK], image_size=config.train_size, device=config.device, num_workers=config.num_workers
    )
    for spec in (run.name, "random", "imagenet"):
        try:
            outcome = step(
                f"embed {spec}", lambda spec=spec: embed(workspace, spec, backbone=backbone, **embed_kw)
            )
        except UnavailableError as exc:
            summary.unavailable[imagenet_id] = exc.message
            say(f"[yellow]demo[/] ImageNet row unavailable: {exc.message}")
            continue
        models.append(outcome[0].path.parent.name)

    manifest = workspace.manifests / f"{TASK}.csv"
    smallest = min(read_manifest(manifest).counts()["train"].values())
    shots = tuple(s for s in config.shots if s == ALL or s <= smallest)  # a smaller demo keeps what fits
    stratified = step(
        "stratified baseline", lambda: evaluate_stratified(workspace, manifest, seed=config.seed, force=force)
    )
    knn = step(
        "knn",
        lambda: evaluate_knn(
            workspace,
            TASK,
            models=models,
            shots=shots,
            repeats=config.repeats,
            seed=config.seed,
            bootstrap=config.bootstrap,
            force=force,
        ),
    )
    # The authors' optimistic kNN beside the honest one (report: dashed, "as published"): how much of a gap
    # to published figures is protocol.
    step(
        "knn as published",
        lambda: evaluate_knn(
            workspace,
            TASK,
            models=models,
            shots=shots,
            repeats=config.repeats,
            seed=config.seed,
            bootstrap=config.bootstrap,
            force=force,
            protocol="paper",
        ),
    )
    probe = step(
        "linear probe",
        lambda: evaluate_probe(
            workspace, TASK, models=models, seed=config.seed, bootstrap=config.bootstrap, force=force
        ),
    )
    ft = FinetuneConfig(
        epochs=config.finetune_epochs,
        batch_size=32,
        lr=config.finetune_lr,
        image_size=config.train_size,
        seed=config.seed,
        device=config.device,
        num_workers=config.num_workers,
        bootstrap=config.bootstrap,
    )
    finetuned: dict[str, dict[str, Any]] = {}
    for spec in (run.name, "random"):
        outcome = step(
            f"finetune {spec}",
            lambda spec=spec: run_finetune(workspace, TASK, spec, ft, backbone=backbone, force=force),
        )
        finetuned[spec] = outcome.payload["metrics"]
    report = step(
        "report", lambda: make_report(workspace.results, workspace.reports, runs_dir=workspace.runs)
    )
    summary.report = report.written.get("html") or next(iter(report.written.values()), None)
    by_model = {s.model: s for s in knn}
    summary.figures = demo_figures(
        method=config.method,
        test_images=sum(read_manifest(manifest).counts()["test"].values()),
        pretrained=by_model[run.name],
        random=by_model[f"random-{backbone}"],
        imagenet=by_model.get(imagenet_id),
        imagenet_unavailable=summary.unavailable.get(imagenet_id),
        stratified=stratified,
        probe={s.model: s for s in probe},
        finetuned={run.name: finetuned[run.name], "random": finetuned["random"]},
        pretrained_id=run.name,
        random_id=f"random-{backbone}",
    )
    summary.verdict = verdict_text(summary.figures)
    say(summary.verdict)
    return summary


# --------------------------------------------------------------------------- the verdict

FEW_SHOTS = 10  # the "labels are scarce" point of the verdict


def _point(value: float, ci: list[float]) -> dict[str, Any]:
    return {"macro_f1": round(100 * value, 1), "ci95": [round(100 * c, 1) for c in ci]}


def _knn_points(s: EvalSummary) -> dict[str, Any]:
    """The all-shots headline (bootstrap CI over test images) and the 10-shot mean (t-interval over draws)."""
    out: dict[str, Any] = {"all": _point(s.macro_f1, s.macro_f1_ci)}
    for p in s.curve:
        if p["shots"] == FEW_SHOTS:
            out[str(FEW_SHOTS)] = _point(p["macro_f1_mean"], p["macro_f1_ci"])
    return out


def demo_figures(
    *,
    method: str,
    test_images: int,
    pretrained: EvalSummary,
    random: EvalSummary,
    imagenet: EvalSummary | None,
    imagenet_unavailable: str | None,
    stratified: EvalSummary,
    probe: dict[str, EvalSummary],
    finetuned: dict[str, dict[str, Any]],
    pretrained_id: str,
    random_id: str,
) -> dict[str, Any]:
    """The verdict's numbers (macro-F1 in %, 95 % intervals), as printed and in `--json`."""
    knn: dict[str, Any] = {"pretrained": _knn_points(pretrained), "random": _knn_points(random)}
    knn["imagenet"] = (
        _knn_points(imagenet) if imagenet is not None else {"unavailable": imagenet_unavailable or ""}
    )
    margins: dict[str, float] = {}
    for key in ("all", str(FEW_SHOTS)):
        if key in knn["pretrained"] and key in knn["random"]:
            margins[key] = round(knn["pretrained"][key]["macro_f1"] - knn["random"][key]["macro_f1"], 1)
    return {
        "method": method,
        "test_images": test_images,
        "knn": knn,
        "knn_margin_points": margins,
        "stratified": _point(stratified.macro_f1, stratified.macro_f1_ci),
        "linear_probe": {
            "pretrained": _point(probe[pretrained_id].macro_f1, probe[pretrained_id].macro_f1_ci),
            "random": _point(probe[random_id].macro_f1, probe[random_id].macro_f1_ci),
        },
        "finetuned": {
            "pretrained": _point(
                finetuned[pretrained_id]["macro_f1"], finetuned[pretrained_id]["macro_f1_ci"]
            ),
            "random": _point(finetuned["random"]["macro_f1"], finetuned["random"]["macro_f1_ci"]),
        },
    }


def _fmt(p: dict[str, Any]) -> str:
    return f"{p['macro_f1']:.1f} [{p['ci95'][0]:.1f}, {p['ci95'][1]:.1f}]"


def _compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How a stands against b, from the intervals: only separated intervals make a claim."""
    if a["ci95"][0] > b["ci95"][1]:
        return "ahead, the intervals do not overlap"
    if a["ci95"][1] < b["ci95"][0]:
        return "behind, the intervals do not overlap"
    return "the intervals overlap: no clear difference"


def verdict_text(f: dict[str, Any]) -> str:
    """One paragraph: pretrained vs random vs ImageNet vs stratified, all shots and 10 shots, with intervals."""
    knn = f["knn"]
    pre, rnd, img = knn["pretrained"], knn["random"], knn["imagenet"]
    name = f["method"].upper() if f["method"] != "simclr" else "SimCLR"
    parts = [
        f"Verdict (kNN macro-F1 in %, 95 % intervals, {f['test_images']} test images): with all training "
        f"labels, {name} pretrained on the unlabelled corpus scores {_fmt(pre['all'])} against "
        f"{_fmt(rnd['all'])} for random init ({f['knn_margin_points']['all']:+.1f} points; "
        f"{_compare(pre['all'], rnd['all'])})"
    ]
    if str(FEW_SHOTS) in pre and str(FEW_SHOTS) in rnd:
        k = str(FEW_SHOTS)
        parts.append(
            f"; with {FEW_SHOTS} labelled images per class, {_fmt(pre[k])} against {_fmt(rnd[k])} "
            f"({f['knn_margin_points'][k]:+.1f} points; {_compare(pre[k], rnd[k])})"
        )
    if "unavailable" in img:
        parts.append(f". ImageNet init: unavailable ({img['unavailable']})")
    else:
        parts.append(f". ImageNet init: {_fmt(img['all'])} with all labels")
        if str(FEW_SHOTS) in img:
            parts.append(f", {_fmt(img[str(FEW_SHOTS)])} at {FEW_SHOTS} shots")
    ft = f["finetuned"]
    parts.append(
        f". The stratified random baseline (chance) is {_fmt(f['stratified'])}. Fine-tuned, the pretrained "
        f"model reaches {_fmt(ft['pretrained'])} and random init {_fmt(ft['random'])}; the linear probe "
        f"{_fmt(f['linear_probe']['pretrained'])} vs {_fmt(f['linear_probe']['random'])}."
    )
    return "".join(parts)
