"""Fine-tuning on a tiny generated task: resnet10t, random init, 32 px, a few epochs, CPU."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermctl import results as eval_results
from dermctl.data.manifest import read_manifest
from dermctl.errors import ConflictError, DataError, UsageError
from dermctl.eval.models import LoadedModel
from dermctl.models.backbone import BackboneMeta, create_backbone
from dermctl.train.finetune import (
    FinetuneConfig,
    FinetuneModel,
    ManifestImages,
    build_transforms,
    class_weights,
    finetune,
    split_train_val,
)
from dermctl.workspace import Workspace

CLASSES = ("bcc", "mel", "nv")
COLOURS = {"bcc": (200, 60, 60), "mel": (40, 40, 40), "nv": (150, 110, 70)}


def make_loaded(name: str = "resnet10t", seed: int = 0) -> LoadedModel:
    """What dermctl.eval.models.resolve_model hands out: a frozen backbone in eval mode."""
    torch.manual_seed(seed)
    backbone = create_backbone(name, "random").eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return LoadedModel(
        backbone=backbone,
        meta=BackboneMeta(timm_name=name, feature_rule="avgpool", input_size=32),
        model_id=f"random-{name}",
        init="random",
        checkpoint_sha256="",
    )


def make_task(
    root: Path, name: str = "tiny", per_class: dict[str, int] | None = None, skin_type: bool = True
) -> Path:
    """A hand-written manifest of PIL-generated images: colour tells the class, noise makes them differ."""
    per_class = per_class or {"train": 4, "val": 2, "test": 2}
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["path,label,split,skin_type" if skin_type else "path,label,split"]
    for label in CLASSES:
        for split, n in per_class.items():
            for i in range(n):
                arr = np.clip(np.array(COLOURS[label]) + rng.normal(0, 25, (40, 48, 3)), 0, 255).astype(
                    "uint8"
                )
                fname = f"{label}_{split}_{i}.png"
                Image.fromarray(arr).save(img_dir / fname)
                row = f"images/{fname},{label},{split}"
                lines.append(row + (f",{1 + i % 3}" if skin_type else ""))
    path = root / "manifests" / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The manifest lives in manifests/; image paths are relative to it.
    path.write_text("\n".join(line.replace("images/", "../images/") for line in lines) + "\n")
    return path


def cfg(**kw: object) -> FinetuneConfig:
    base = dict(epochs=3, batch_size=4, image_size=32, num_workers=0, bootstrap=50, device="cpu", patience=5)
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ pieces


def test_class_weights_inverse_frequency() -> None:
    w = class_weights([0, 0, 0, 1, 2, 2], 3)
    # n / (k * n_c): 6 / (3*3), 6 / (3*1), 6 / (3*2)
    assert torch.allclose(w, torch.tensor([6 / 9, 2.0, 1.0]))
    assert torch.allclose(class_weights([0, 1, 0, 1], 2), torch.ones(2))
    assert class_weights([0, 0], 2)[1] == 0


def test_config_validation_names_option() -> None:
    with pytest.raises(UsageError, match="--epochs"):
        cfg(epochs=0).validate()
    with pytest.raises(UsageError, match="--early-stop"):
        cfg(early_stop="acc").validate()


def test_split_train_val_grouped_and_stratified(tmp_path: Path) -> None:
    m = read_manifest(make_task(tmp_path, per_class={"train": 10, "test": 1}, skin_type=False))
    rows = m.split_rows("train")
    for i, r in enumerate(rows):
        r.group = f"p{i // 2}"  # pairs of images per patient
    train, val = split_train_val(rows, seed=0)
    assert len(train) + len(val) == len(rows)
    assert {r.label for r in val} == set(CLASSES)
    assert not {r.group for r in train} & {r.group for r in val}
    assert split_train_val(rows, seed=0)[1] == val  # seeded


def test_transforms_shape_and_green_channel(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 45), (10, 200, 30))
    meta = BackboneMeta("resnet10t", "avgpool", input_size=32, channels="green", in_chans=1)
    train, evaluate = build_transforms(meta, 32)
    assert train(img).shape == (1, 32, 32)
    x = evaluate(img)
    assert x.shape == (1, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (200 / 255 - 0.456) / 0.224), atol=1e-3)


def test_dataset_reports_broken_image(tmp_path: Path) -> None:
    m = read_manifest(make_task(tmp_path))
    bad = m.resolve(m.rows[0])
    bad.write_bytes(b"not an image")
    ds = ManifestImages(m, m.rows, m.classes, build_transforms(make_loaded().meta, 32)[1])
    with pytest.raises(DataError, match=bad.name):
        ds[0]


# ------------------------------------------------------------------ the run


def test_finetune_writes_valid_result_and_run_folder(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    m = read_manifest(make_task(tmp_path))
    loaded = make_loaded()
    initial = {k: v.clone() for k, v in loaded.backbone.state_dict().items()}
    out = finetune(ws, m, loaded, cfg(class_balanced=True))
    res = eval_results.read_result(out.result_path)  # the shared schema validator accepts it
    assert out.result_path == ws.result_path("finetune", "random-resnet10t", "tiny")
    assert res["schema"] == "dermctl.result/1" and res["protocol"] == "finetune"
    assert res["model"] == "random-resnet10t" and res["init"] == "random" and res["backbone"] == "resnet10t"
    assert res["class_names"] == list(CLASSES)
    assert 0.0 <= res["metrics"]["macro_f1"] <= 1.0 and res["metrics"]["n"] == 6
    lo, hi = res["metrics"]["macro_f1_ci"]
    assert lo <= hi
    assert set(res["per_skin_type"]) == {"1", "2"}
    test_hashes = [hashlib.sha256(m.resolve(r).read_bytes()).hexdigest() for r in m.split_rows("test")]
    assert res["test_split_sha256"] == eval_results.test_split_hash(test_hashes)
    assert res["provenance"]["versions"]["torch"] and res["inputs"]["manifest"]
    run = out.run_dir
    assert run == ws.runs / "finetune-random-resnet10t-tiny"
    for name in ("last.pt", "best.pt", "metrics.csv", "config.json", "run.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # checkpoints are plain containers: loadable without pickle code
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["batch"] == 0  # all three epochs completed
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    # the backbone was trained too (handed over frozen, as resolve_model does), not only the head
    trained = {k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")}
    assert any(not torch.equal(initial[k], trained[k]) for k in initial if initial[k].is_floating_point())
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*tmp"))


def test_existing_result_is_a_conflict(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    m = read_manifest(make_task(tmp_path))
    finetune(ws, m, make_loaded(), cfg(epochs=1))
    before = ws.result_path("finetune", "random-resnet10t", "tiny").read_bytes()
    with pytest.raises(ConflictError, match="--force"):
        finetune(ws, m, make_loaded(), cfg(epochs=1))
    assert ws.result_path("finetune", "random-resnet10t", "tiny").read_bytes() == before
    finetune(ws, m, make_loaded(), cfg(epochs=1), force=True)


def test_early_stopping_keeps_and_evaluates_best_epoch(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    m = read_manifest(make_task(tmp_path))
    # loss mode: val loss varies every epoch, so the best epoch is well defined
    out = finetune(ws, m, make_loaded(), cfg(epochs=6, patience=1, early_stop="loss", lr=3e-3, head_lr=3e-2))
    losses = [h["val_loss"] for h in out.history]
    best = int(np.argmin(losses))
    assert out.best_epoch == best + 1
    assert out.payload["best_epoch"] == best + 1
    # patience 1: stops right after the first epoch that does not improve (or at the epoch limit)
    assert out.epochs_run == min(best + 2, 6)
    assert out.stopped_early == (out.epochs_run < 6)
    # best.pt really is that epoch's model: re-evaluating it on val reproduces the logged val loss
    state = torch.load(out.run_dir / "best.pt", weights_only=True)
    assert state["epoch"] == best + 1  # epochs completed: the 1-based epoch whose weights it holds
    net = FinetuneModel(create_backbone("resnet10t", "random"), 3, make_loaded().meta)
    net.load_state_dict(state["model"])
    net.eval()
    ds = ManifestImages(m, m.split_rows("val"), m.classes, build_transforms(make_loaded().meta, 32)[1])
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(net(x), y).item()
    assert loss == pytest.approx(losses[best], rel=1e-4)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    m_a = read_manifest(make_task(tmp_path / "a"))
    full = finetune(Workspace.at(tmp_path / "a"), m_a, make_loaded(seed=0), cfg())

    m_b = read_manifest(make_task(tmp_path / "b"))
    ws_b = Workspace.at(tmp_path / "b")

    def interrupt(epoch: int, row: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(ws_b, m_b, make_loaded(seed=0), cfg(), on_epoch_end=interrupt)
    assert not ws_b.result_path("finetune", "random-resnet10t", "tiny").exists()
    # a fresh, differently initialised backbone: everything must come from the checkpoint
    with pytest.raises(ConflictError, match="--resume"):
        finetune(ws_b, m_b, make_loaded(seed=1), cfg())
    with pytest.raises(ConflictError, match="lr"):
        finetune(ws_b, m_b, make_loaded(seed=1), cfg(lr=1e-3), resume=True)
    resumed = finetune(ws_b, m_b, make_loaded(seed=1), cfg(), resume=True)

    for a, b in zip(full.history, resumed.history, strict=True):
        for key in ("train_loss", "val_loss", "val_macro_f1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    sa = torch.load(full.run_dir / "last.pt", weights_only=True)["model"]
    sb = torch.load(resumed.run_dir / "last.pt", weights_only=True)["model"]
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k
    assert full.payload["metrics"]["macro_f1"] == resumed.payload["metrics"]["macro_f1"]


def assert_same_run(full, resumed) -> None:  # type: ignore[no-untyped-def]
    """Per-epoch numbers and the test metric of a resumed run equal the uninterrupted run's."""
    for a, b in zip(full.history, resumed.history, strict=True):
        for key in ("train_loss", "val_loss", "val_macro_f1", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert full.payload["metrics"]["macro_f1"] == resumed.payload["metrics"]["macro_f1"]


def on_fifth_train_batch(monkeypatch, act) -> None:  # type: ignore[no-untyped-def]
    """Patch FinetuneModel.forward so that `act(out)` replaces the output of the 5th training forward
    (epoch 2 of 3 batches per epoch, its second batch); `monkeypatch.undo()` restores it."""
    from dermctl.train.finetune import FinetuneModel

    forward = FinetuneModel.forward
    calls = {"n": 0}

    def patched(self, x):  # type: ignore[no-untyped-def]
        out = forward(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                return act(out)
        return out

    monkeypatch.setattr(FinetuneModel, "forward", patched)


def sigint(out):  # type: ignore[no-untyped-def]
    """As SLURM would: SIGINT to this process, mid-step."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGINT)
    return out


def test_sigint_mid_epoch_checkpoints_and_resume_equals_uninterrupted(tmp_path: Path, monkeypatch) -> None:
    from dermctl.runtime.signals import RunInterrupted

    m_a = read_manifest(make_task(tmp_path / "a"))
    full = finetune(Workspace.at(tmp_path / "a"), m_a, make_loaded(seed=0), cfg())

    m_b = read_manifest(make_task(tmp_path / "b"))
    ws_b = Workspace.at(tmp_path / "b")
    on_fifth_train_batch(monkeypatch, sigint)
    with pytest.raises(RunInterrupted, match="after batch 2"):
        finetune(ws_b, m_b, make_loaded(seed=0), cfg())
    monkeypatch.undo()
    state = torch.load(ws_b.runs / "finetune-random-resnet10t-tiny" / "last.pt", weights_only=True)
    # a mid-epoch checkpoint: one epoch completed, two batches of the second trained
    assert (state["epoch"], state["batch"], len(state["history"])) == (1, 2, 1)
    resumed = finetune(ws_b, m_b, make_loaded(seed=1), cfg(), resume=True)
    assert_same_run(full, resumed)


def test_a_checkpoint_of_dermctl_0_2_still_resumes(tmp_path: Path, monkeypatch) -> None:
    """0.1.0/0.2 fine-tuning checkpoints counted `epoch` from 0 (the last completed one), kept the early
    stopping state under `early_stop` and the partial epoch as [loss sum, images]."""
    from dermctl.runtime.checkpoint import save_checkpoint
    from dermctl.runtime.signals import RunInterrupted

    m_a = read_manifest(make_task(tmp_path / "a"))
    full = finetune(Workspace.at(tmp_path / "a"), m_a, make_loaded(seed=0), cfg())
    m_b = read_manifest(make_task(tmp_path / "b"))
    ws_b = Workspace.at(tmp_path / "b")
    on_fifth_train_batch(monkeypatch, sigint)
    with pytest.raises(RunInterrupted):
        finetune(ws_b, m_b, make_loaded(seed=0), cfg())
    monkeypatch.undo()
    last = ws_b.runs / "finetune-random-resnet10t-tiny" / "last.pt"
    state = torch.load(last, weights_only=True)
    old = {k: v for k, v in state.items() if k not in ("format", "early_stopping", "iteration")}
    old.update(
        epoch=state["epoch"] - 1,
        early_stop=state["early_stopping"],
        partial=[state["partial"]["loss_sum"], state["partial"]["n"]],
        done=False,
    )
    save_checkpoint(old, last)
    resumed = finetune(ws_b, m_b, make_loaded(seed=1), cfg(), resume=True)
    assert_same_run(full, resumed)


def test_a_bad_loss_keeps_the_last_good_state_and_says_diverged(tmp_path: Path, monkeypatch) -> None:
    from dermctl.errors import TrainingError

    m = read_manifest(make_task(tmp_path))
    ws = Workspace.at(tmp_path)
    on_fifth_train_batch(monkeypatch, lambda out: out * float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at epoch 2.*--head-lr"):
        finetune(ws, m, make_loaded(seed=0), cfg())
    run = ws.runs / "finetune-random-resnet10t-tiny"
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    state = torch.load(run / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 1)  # the one good batch of epoch 2 is kept
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_vit_head_sits_on_the_probes_features_cls4() -> None:
    """Gröger et al. sec. 3.5: ViT features are the class tokens of the last 4 blocks; fine-tuning puts its
    head on the same features as embed and the probe (not on the last class token only)."""
    from dermctl.models.backbone import extract_features

    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224", "random")
    meta = BackboneMeta(timm_name="vit_tiny_patch16_224", feature_rule="cls4", input_size=32)
    net = FinetuneModel(vit, 3, meta).eval()
    assert net.head.in_features == 4 * vit.num_features
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), net.head(extract_features(vit, x, "cls4")), atol=1e-6)
    net.train()
    net(x).sum().backward()  # the whole backbone trains through the 4 taps
    assert vit.blocks[-4].attn.qkv.weight.grad is not None and vit.patch_embed.proj.weight.grad is not None
