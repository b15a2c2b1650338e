"""dermctl.train.engine: the run folder, schedules, resume equality, divergence, early stop, collapse."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading

import numpy as np
import pytest
import timm
import torch
from helpers_methods import make_corpus, make_images, make_task

from dermctl.errors import EXIT_INTERRUPTED, EXIT_TRAINING, ConflictError, TrainingError, UsageError
from dermctl.models.backbone import load_exported
from dermctl.runtime.checkpoint import load_checkpoint
from dermctl.train.config import build_config
from dermctl.train.engine import RunInterrupted, build_schedules, pretrain
from dermctl.workspace import Workspace


@pytest.fixture
def setup(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    ws.ensure()
    imgs = make_images(tmp_path / "img", 12)
    man = make_corpus(tmp_path / "corpus.csv", imgs)
    return ws, man, imgs


def _metrics(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_schedules_hit_documented_values():
    cfg = build_config(
        "tinytest",
        None,
        {
            "lr": 0.1,
            "lr_scaling": "linear256",
            "warmup_epochs": 2,
            "min_lr": 1e-4,
            "epochs": 10,
            "weight_decay": 0.04,
            "weight_decay_end": 0.4,
            "momentum_teacher": 0.99,
        },
    )
    s = build_schedules(cfg, iters_per_epoch=5, global_batch=512)
    assert all(len(v) == 50 for v in s.values())
    assert s["lr"][0] == 0.0
    assert s["lr"][9] == pytest.approx(0.2)  # end of warm-up: lr * 512 / 256
    assert s["lr"][10] == pytest.approx(0.2)  # cosine starts at the base value
    # official DINO cosine: final + (base - final) / 2 * (1 + cos(pi * i / n)), i < n; the end approaches final
    assert s["lr"][-1] == pytest.approx(1e-4 + 0.5 * (0.2 - 1e-4) * (1 + np.cos(np.pi * 39 / 40)))
    assert s["weight_decay"][0] == pytest.approx(0.04)
    assert s["weight_decay"][-1] == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + np.cos(np.pi * 49 / 50)))
    assert s["momentum"][0] == pytest.approx(0.99)
    assert s["momentum"][-1] == pytest.approx(1.0 + 0.5 * (0.99 - 1.0) * (1 + np.cos(np.pi * 49 / 50)))
    flat = build_schedules(dict(cfg, lr_schedule="none", warmup_epochs=0, lr_scaling="none"), 5, 512)
    assert np.allclose(flat["lr"], 0.1)
    assert np.allclose(build_schedules(dict(cfg, weight_decay_end=None), 5, 8)["weight_decay"], 0.04)


def test_run_folder_contents_and_export(tmp_path, setup):
    ws, man, imgs = setup
    task_imgs = make_images(tmp_path / "timg", 8, seed=3, prefix="t")
    make_task(ws.manifests / "lesions.csv", task_imgs, n_val=2)  # the monitor scores val
    leaky = make_corpus(tmp_path / "leaky.csv", task_imgs[:2])  # evaluation images inside a corpus
    lines = []
    cfg = build_config("tinytest", None, {"epochs": 2, "monitor_task": "lesions", "monitor_every": 1})
    s = pretrain(cfg, [man, leaky], ws, log=lines.append, device="cpu")
    assert s.excluded == 2 and s.train_images + s.val_images == 12
    run = ws.runs / "tinytest-resnet10t"
    assert s.run_dir == run and s.status == "finished" and s.epochs_run == 2
    for f in (
        "config.json",
        "metrics.csv",
        "run.json",
        "checkpoints/last.pt",
        "checkpoints/last.pt.sha256",
        "checkpoints/best.pt",
        "backbone.safetensors",
        "backbone.json",
    ):
        assert (run / f).is_file(), f
    assert not (run / ".lock").exists()
    conf = json.loads((run / "config.json").read_text())
    assert conf["config"]["epochs"] == 2 and conf["data"]["excluded_task_images"] == 2
    assert str(man.resolve()) in conf["provenance"]["inputs"] and "torch" in conf["provenance"]["versions"]
    rows = _metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "train_loss",
        "val_loss",
        "lr",
        "weight_decay",
        "momentum",
        "ramp",
        "feature_std",
        "monitor_knn_f1",
        "collapsed",
        "seconds",
        "images_per_s",
        "data_wait_share",
    ):
        assert col in rows[0], col
    assert 0.0 <= float(rows[1]["monitor_knn_f1"]) <= 1.0
    assert rows[1]["ramp"] == "1.0"  # the method's schedule at the epoch's last iteration
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "finished" and status["epochs_run"] == 2
    assert status["best_epoch"] == s.best_epoch
    assert any("2 evaluation-task images excluded" in m for m in lines)

    # The export is the best epoch's student backbone, loadable by plain timm with identical outputs.
    best = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    meta = json.loads((run / "backbone.json").read_text())
    assert meta["extra"]["method"] == "tinytest" and meta["extra"]["best_epoch"] == s.best_epoch
    plain = timm.create_model(
        "resnet10t",
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(file=str(run / "backbone.safetensors")),
    ).eval()
    ours, _ = load_exported(run)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, best[f"backbone.{k}"]), k
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(plain(x), ours.eval()(x))

    with pytest.raises(ConflictError, match="--resume"):
        pretrain(cfg, [man], ws, device="cpu")
    with pytest.raises(ConflictError, match="already ended"):
        pretrain(cfg, [man], ws, device="cpu", resume=True)


def test_resume_after_interrupt_equals_uninterrupted(setup):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    ws, man, _ = setup
    cfg = build_config("tinytest", None, {"epochs": 3, "seed": 3})
    pretrain(cfg, [man], ws, name="full", device="cpu")

    def interrupt(u):
        if u.epoch == 2 and u.batch == 1:  # mid-epoch: resume must skip the batch already seen
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted) as err:
        pretrain(cfg, [man], ws, name="cut", device="cpu", progress=interrupt)
    assert err.value.exit_code == EXIT_INTERRUPTED
    assert json.loads((ws.runs / "cut" / "run.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(ws.runs / "cut" / "checkpoints" / "last.pt")["batch"] == 1
    with pytest.raises(UsageError, match="'lr'"):
        pretrain(dict(cfg, lr=0.5), [man], ws, name="cut", device="cpu", resume=True)
    s = pretrain(cfg, [man], ws, name="cut", device="cpu", resume=True)
    assert s.status == "finished" and s.epochs_run == 3
    full = _metrics(ws.runs / "full" / "metrics.csv")
    cut = _metrics(ws.runs / "cut" / "metrics.csv")
    assert len(full) == len(cut) == 3
    for a, b in zip(full, cut, strict=True):
        for col in ("train_loss", "val_loss", "feature_std", "lr", "momentum"):
            assert float(a[col]) == pytest.approx(float(b[col]), abs=1e-6), (a["epoch"], col)


def test_nan_loss_stops_with_resumable_checkpoint(setup):
    ws, man, _ = setup
    cfg = build_config("tinytest", None, {"epochs": 3, "nan_at_it": 3})  # 2 iterations per epoch: epoch 2
    with pytest.raises(TrainingError, match="nan") as err:
        pretrain(cfg, [man], ws, name="nan", device="cpu")
    assert err.value.exit_code == EXIT_TRAINING
    run = ws.runs / "nan"
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"]) == (1, 1)  # the last good state: before the bad step
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(_metrics(run / "metrics.csv")) == 1


def _assert_exported(run, model_state):
    ours, _ = load_exported(run)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, model_state[f"backbone.{k}"]), k


def test_early_stopping_and_collapse_flag(setup):
    ws, man, _ = setup
    # min_delta so large that no epoch after the first improves: stops after exactly `patience` more.
    cfg = build_config(
        "tinytest", None, {"epochs": 10, "patience": 2, "min_delta": 100.0, "export_epoch": "best"}
    )
    s = pretrain(cfg, [man], ws, name="es", device="cpu")
    assert s.status == "early_stopped" and s.epochs_run == 3 and s.best_epoch == 1
    assert s.exported_epoch == 1
    best = load_checkpoint(ws.runs / "es" / "checkpoints" / "best.pt")["model"]
    _assert_exported(ws.runs / "es", best)
    # export_epoch = last (the default): the backbone of the epoch the run ended on
    s = pretrain(dict(cfg, export_epoch="last"), [man], ws, name="es-last", device="cpu")
    assert (s.best_epoch, s.exported_epoch) == (1, 3)
    last = load_checkpoint(ws.runs / "es-last" / "checkpoints" / "last.pt")["model"]
    assert not all(torch.equal(last[k], best[k]) for k in best if k.startswith("backbone."))
    _assert_exported(ws.runs / "es-last", last)
    assert json.loads((ws.runs / "es-last" / "backbone.json").read_text())["extra"]["exported_epoch"] == 3
    cfg = build_config("tinytest", None, {"epochs": 1, "collapse_std": 10.0})
    s = pretrain(cfg, [man], ws, name="col", device="cpu")
    assert s.status == "collapsed" and s.warnings
    assert _metrics(ws.runs / "col" / "metrics.csv")[0]["collapsed"] == "true"
    assert (ws.runs / "col" / "backbone.safetensors").is_file()


def test_bad_inputs_fail_before_training(setup):
    ws, man, _ = setup
    cfg = build_config("tinytest", None, {"batch_size": 64})
    with pytest.raises(UsageError, match="--batch-size"):
        pretrain(cfg, [man], ws, device="cpu")
    with pytest.raises(UsageError, match="--backbone"):
        pretrain(dict(cfg, backbone="not_a_model"), [man], ws, device="cpu")
    assert not (ws.runs / "tinytest-resnet10t").exists()


def test_dist_shards_cover_the_epoch_equally():
    from dermctl.runtime.distributed import Dist

    order = [4, 0, 3, 1, 2]
    shards = [Dist(rank=r, world_size=2).shard(order) for r in range(2)]
    assert shards == [[4, 3, 2], [0, 1, 4]]  # padded with the first items, like DistributedSampler
    assert set(shards[0]) | set(shards[1]) == set(order)
    assert Dist().shard(order) == order and Dist().is_main


def test_val_batches_are_loaded_once_and_give_the_same_val_loss(setup, monkeypatch):
    """The val views are fixed, so a small val set is replayed from memory: the val losses equal those of
    loading it every epoch, and its loader is built only for the first validation."""
    import dermctl.train.engine as engine

    ws, man, _ = setup
    calls: list[int] = []
    real = engine.make_loader

    def counting(ds, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(id(ds))
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(engine, "make_loader", counting)
    cfg = build_config("tinytest", None, {"epochs": 3, "patience": 0, "num_workers": 0})
    cached = pretrain(cfg, [man], ws, name="cached", device="cpu")
    loads_cached = len(calls)
    monkeypatch.setattr(engine, "VAL_CACHE_BYTES", 0)
    calls.clear()
    fresh = pretrain(cfg, [man], ws, name="fresh", device="cpu")
    assert cached.status == fresh.status == "finished"
    assert [r["val_loss"] for r in _metrics(ws.runs / "cached" / "metrics.csv")] == [
        r["val_loss"] for r in _metrics(ws.runs / "fresh" / "metrics.csv")
    ]
    assert len(calls) - loads_cached == 2  # epochs 2 and 3 loaded val again only without the cache


def test_val_is_read_in_this_process_unless_several_workers_and_gives_the_same_val_loss(setup, monkeypatch):
    """One loader process decodes no faster than the training process, idle during validation: with at
    most one worker the val set is read in-process (no process started for it); the val loss is the same."""
    import dermctl.train.engine as engine

    ws, man, _ = setup
    calls: list[tuple[int, int]] = []  # (dataset, workers); the train loader is built first
    real = engine.make_loader

    def recording(ds, batches, num_workers, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append((id(ds), num_workers))
        return real(ds, batches, num_workers, *args, **kwargs)

    monkeypatch.setattr(engine, "make_loader", recording)
    losses = {}
    for n in (1, 2):
        calls.clear()
        cfg = build_config("tinytest", None, {"epochs": 1, "patience": 0, "num_workers": n})
        pretrain(cfg, [man], ws, name=f"w{n}", device="cpu")
        train_ds = calls[0][0]
        assert [w for ds, w in calls if ds == train_ds] == [n]
        assert [w for ds, w in calls if ds != train_ds] == [0 if n == 1 else n]
        losses[n] = [r["val_loss"] for r in _metrics(ws.runs / f"w{n}" / "metrics.csv")]
    assert losses[1] == losses[2]
