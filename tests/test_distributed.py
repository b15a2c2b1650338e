"""Data-parallel training: sharding, batch-size rules, synchronised BatchNorm, and 2-process gloo runs of
every method under `torchrun` compared with one process at the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_methods import make_corpus, make_images, make_task
from torch import nn

from dermctl.errors import UsageError
from dermctl.runtime.checkpoint import load_checkpoint
from dermctl.runtime.distributed import (
    DEBUG_HASH_ENV,
    CPUSyncBatchNorm,
    Dist,
    contiguous_shard,
    convert_sync_batchnorm,
    per_process_batch,
    shard_counts,
    state_hash,
    use_sync_bn,
)
from dermctl.train.config import build_config
from dermctl.train.engine import RunInterrupted, pretrain
from dermctl.workspace import Workspace

CPU = torch.device("cpu")

# Tiny configs (as --set values): 8 train + 4 val images, global batch 4, 2 epochs = 4 steps.
TINY = {
    "simclr": {"backbone": "resnet10t", "init": "random", "proj_hidden_dim": 16, "proj_out_dim": 8},
    "byol": {
        "backbone": "resnet10t",
        "init": "random",
        "proj_hidden_dim": 16,
        "proj_out_dim": 8,
        "pred_hidden_dim": 16,
    },
    # ColorMe's paper does not synchronise BN; turned on here so that 2 x 2 images equal 1 x 4. Its KL
    # summed over the batch (the study's default) must stay a sum over the global batch under DDP.
    "colorme": {
        "backbone": "resnet10t",
        "init": "random",
        # Random crops: with the default resize-only views the encoder's first conv of 1 and 2 processes
        # ends ~4e-2 apart after 2 epochs (losses agree); not yet explained (see CHANGELOG).
        "views": "crop",
        "decoder_channels": [16, 16, 8, 8, 8],
        "sync_bn": True,
    },
    "dino": {
        "local_crop_size": 16,
        "local_crops_number": 2,
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "warmup_teacher_temp_epochs": 0,
        "warmup_epochs": 0,
        "drop_path_rate": 0.0,  # stochastic depth draws from each process's RNG: not comparable
    },
    "ibot": {
        "local_crop_size": 16,
        "local_crops_number": 2,
        "out_dim": 64,
        "patch_out_dim": 32,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "warmup_teacher_temp_epochs": 0,
        "warmup_epochs": 0,
        "drop_path_rate": 0.0,
    },
}
# SGD: Adam's first steps (about lr x sign(g)) blow float noise in near-zero gradients up to lr.
COMMON = {
    "epochs": 2,
    "image_size": 32,
    "num_workers": 0,
    "global_batch": 4,
    "patience": 0,
    "seed": 1,
    "optimizer": "sgd",
    "lr": 0.05,
    "lr_scaling": "none",
}


# -- pieces --------------------------------------------------------------------------------------------


def test_shards_of_per_rank_batches_are_the_single_process_global_batches():
    order = list(range(20))
    world, b = 2, 3
    shards = [Dist(rank=r, world_size=world).shard(order) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 10
    for k in range(10 // b):
        together = sorted(i for s in shards for i in s[k * b : (k + 1) * b])
        assert together == order[k * b * world : (k + 1) * b * world]
    # fewer items than ranks: padding repeats the order, every rank still gets one
    tiny = [Dist(rank=r, world_size=4).shard([7, 9]) for r in range(4)]
    assert tiny == [[7], [9], [7], [9]]


def test_global_batch_must_divide_by_world_size():
    assert per_process_batch({"batch_size": 5, "global_batch": None}, 4) == 5
    assert per_process_batch({"batch_size": 5, "global_batch": 12}, 4) == 3
    with pytest.raises(UsageError, match="'global_batch' = 10: not divisible by the world size 4"):
        per_process_batch({"batch_size": 5, "global_batch": 10}, 4)
    with pytest.raises(UsageError, match="'global_batch'"):
        per_process_batch({"batch_size": 5, "global_batch": 0}, 1)


def test_sync_bn_default_follows_the_papers():
    assert use_sync_bn({"method": "simclr", "sync_bn": "auto"})
    assert use_sync_bn({"method": "byol", "sync_bn": "auto"})
    assert not use_sync_bn({"method": "dino", "sync_bn": "auto"})
    assert use_sync_bn({"method": "colorme", "sync_bn": True})
    with pytest.raises(UsageError, match="'sync_bn' = 'yes'"):
        use_sync_bn({"method": "simclr", "sync_bn": "yes"})
    assert build_config("simclr", None, {})["sync_bn"] == "auto"


def test_convert_keeps_parameters_buffers_and_state_dict_keys():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2)
    )
    net[1].weight.requires_grad_(False)
    keys, weight = list(net.state_dict()), net[1].weight
    convert_sync_batchnorm(net, CPU)
    assert isinstance(net[1], CPUSyncBatchNorm) and isinstance(net[4], CPUSyncBatchNorm)
    assert list(net.state_dict()) == keys and net[1].weight is weight and not weight.requires_grad
    # single process (no process group): exactly a BatchNorm
    plain = nn.BatchNorm2d(4)
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(net[1](x), plain(x)) and torch.allclose(net[1].running_var, plain.running_var)


@pytest.mark.slow
def test_cpu_sync_batchnorm_equals_one_process_on_the_whole_batch(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    from ddp_scripts.sync_bn_worker import sync_bn_rank

    torch.multiprocessing.spawn(sync_bn_rank, args=(2, init, str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    w = torch.randn(8, 3, 4, 4)
    bn = nn.BatchNorm2d(3)
    loss = (bn(x) * w).sum() / 8  # the global loss = mean of the two ranks' losses
    loss.backward()
    r = [torch.load(tmp_path / f"r{k}.pt") for k in range(2)]
    assert torch.allclose(torch.cat([r[0]["gx"], r[1]["gx"]]) / 2, x.grad, atol=1e-6)
    assert torch.allclose((r[0]["gw"] + r[1]["gw"]) / 2, bn.weight.grad, atol=1e-6)
    assert torch.allclose(r[0]["rv"], bn.running_var, atol=1e-6) and torch.equal(r[0]["rv"], r[1]["rv"])


def test_contiguous_shards_cover_in_order():
    parts = [contiguous_shard(7, Dist(rank=r, world_size=3)) for r in range(3)]
    assert parts == [(0, 3), (3, 5), (5, 7)] and shard_counts(7, 3) == [3, 2, 2]


def test_bad_world_setups_are_refused_before_training(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    ws.ensure()
    man = make_corpus(tmp_path / "c.csv", make_images(tmp_path / "img", 6), ["train"] * 5 + ["val"])
    two = Dist(rank=0, world_size=2)  # no process group: these must fail before any collective
    cfg = build_config("simclr", None, {**TINY["simclr"], **COMMON, "global_batch": 3})
    with pytest.raises(UsageError, match="not divisible by the world size 2"):
        pretrain(cfg, [man], ws, device="cpu", dist=two)
    cfg = build_config("simclr", None, {**TINY["simclr"], **COMMON, "global_batch": None, "batch_size": 3})
    with pytest.raises(UsageError, match=r"global batch 6 \(batch size 3 x 2 process\(es\)\).*5 training"):
        pretrain(cfg, [man], ws, device="cpu", dist=two)
    assert not (ws.runs / "simclr-resnet10t").exists()


def test_state_hash_sees_every_tensor():
    a, b = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    assert state_hash(a) == state_hash(b)
    b.num_batches_tracked += 1
    assert state_hash(a) != state_hash(b)


# -- 2-process runs ------------------------------------------------------------------------------------
# One torchrun job runs every 2-process command (tests/ddp_scripts/cli_jobs.py) so that the ranks start
# once; the one-process references run in this process.

JOBS_SCRIPT = Path(__file__).parent / "ddp_scripts" / "cli_jobs.py"
METHODS = ("simclr", "byol", "colorme", "dino", "ibot")


def torchrun_jobs(jobs: list[dict], folder: Path) -> subprocess.CompletedProcess:
    spec = folder / "jobs.json"
    spec.write_text(json.dumps(jobs))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(DEBUG_HASH_ENV, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, str(JOBS_SCRIPT), str(spec)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _sets(cfg: dict) -> list[str]:
    out = []
    for k, v in cfg.items():
        out += ["--set", f"{k}={json.dumps(v)}"]
    return out


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _single(method: str, corpus: Path, ws: Workspace, name: str, **extra) -> Path:
    cfg = build_config(method, None, {**TINY[method], **COMMON})
    pretrain(cfg, [corpus], ws, name=name, device="cpu", **extra)
    return ws.runs / name


def _assert_same_losses(a: Path, b: Path, rel: float) -> None:
    ra, rb = _rows(a / "metrics.csv"), _rows(b / "metrics.csv")
    assert len(ra) == len(rb) == COMMON["epochs"]
    for x, y in zip(ra, rb, strict=True):
        for col in ("train_loss", "val_loss", "lr"):
            assert float(x[col]) == pytest.approx(float(y[col]), rel=rel), (b.name, x["epoch"], col)


RUN_FILES = [
    "backbone.json",
    "backbone.safetensors",
    "checkpoints/best.pt",
    "checkpoints/best.pt.sha256",
    "checkpoints/last.pt",
    "checkpoints/last.pt.sha256",
    "config.json",
    "metrics.csv",
    "run.json",
]


@pytest.mark.slow
def test_two_processes_match_one_for_every_method_embed_and_resume(tmp_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    imgs = make_images(tmp_path / "img", 12, size=40)
    corpus = make_corpus(tmp_path / "corpus.csv", imgs, ["train"] * 8 + ["val"] * 4)
    one, two = Workspace.at(tmp_path / "one"), Workspace.at(tmp_path / "two")
    one.ensure()
    two.ensure()
    # 7 task images: shards of 4 and 3 rows
    task = make_task(two.manifests / "lesions.csv", make_images(tmp_path / "task", 7, seed=5, prefix="t"))
    for m in METHODS:
        _single(m, corpus, one, m)

    def interrupt(u):
        if u.epoch == 2 and u.batch == 1:  # mid-epoch, taken by one process
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted):
        _single("simclr", corpus, two, "cut", progress=interrupt)
    cut_state = load_checkpoint(two.runs / "cut" / "checkpoints" / "last.pt")
    assert (cut_state["world_size"], cut_state["batch"]) == (1, 1)

    model = str(two.runs / "simclr")  # exported by the 2-process run below: must load like any export

    base = ["-C", str(two.root)]
    jobs = [
        {
            "args": [*base, "pretrain", "--method", m, "--data", str(corpus), "--name", m, "--device", "cpu"]
            + _sets({**TINY[m], **COMMON}),
            "hash_dir": str(tmp_path / "hashes" / m),
        }
        for m in METHODS
    ]
    jobs.append(
        {
            "args": [*base, "pretrain", "--method", "simclr", "--data", str(corpus), "--name", "cut"]
            + ["--device", "cpu", "--resume", *_sets({**TINY["simclr"], **COMMON})]
        }
    )
    jobs.append(
        {
            "args": [
                *base,
                "embed",
                "--model",
                model,
                "--task",
                "lesions",
                "--batch-size",
                "2",
                "--device",
                "cpu",
            ]
        }
    )
    jobs.append(
        {
            "args": [
                *base,
                "finetune",
                "--task",
                "lesions",
                "--model",
                model,
                "--epochs",
                "2",
                "--image-size",
                "64",
            ]
            + ["--batch-size", "2", "--device", "cpu", "--workers", "0", "--bootstrap", "10"]
        }
    )
    proc = torchrun_jobs(jobs, tmp_path)

    for m in METHODS:
        run = two.runs / m
        # both ranks end with identical weights and buffers (centres, BN statistics, EMA teachers)
        ranks = [json.loads((tmp_path / "hashes" / m / f"rank{r}.json").read_text()) for r in range(2)]
        assert ranks[0]["world_size"] == 2 and ranks[0]["sha256"] == ranks[1]["sha256"], m
        # Same global batch -> same losses and weights as one process (views seeded per image, BN
        # synchronised). Without BatchNorm (ViTs) they agree to float precision; with BN over 4-8 values
        # per channel the ~1e-7 difference of two-pass vs Welford statistics grows to ~1e-3 in 4 steps
        # (unsynchronised BN is ~20 % off in epoch 2). SimCLR's head ends with a second BatchNorm (the
        # official head) over its 8 projection dims, which amplifies that drift to ~6e-3 by epoch 2.
        bn = m in ("simclr", "byol", "colorme")
        _assert_same_losses(one.runs / m, run, rel=1e-2 if m == "simclr" else 5e-3 if bn else 1e-5)
        a = load_checkpoint(one.runs / m / "checkpoints" / "last.pt")["model"]
        b = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
        assert set(a) == set(b) and not any(k.startswith("module.") for k in b)
        for k in a:
            if a[k].is_floating_point() and not k.endswith(("running_mean", "running_var")):
                tol = 1e-2 if bn else 1e-5
                assert torch.allclose(a[k], b[k], rtol=tol, atol=tol), (m, k)
        # exactly one set of files, describing the 2-process job
        record = json.loads((run / "config.json").read_text())
        assert (record["world_size"], record["global_batch"], record["batch_size_per_process"]) == (2, 4, 2)
        assert record["sync_bn"] == (m in ("simclr", "byol", "colorme"))
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == RUN_FILES
        assert proc.stdout.count(f"run {m}: finished") == 1  # only rank 0 prints

    # resumed at world size 2 with the same global batch: continues exactly where one process stopped
    assert "resuming cut at epoch 2, batch 2" in proc.stderr
    assert proc.stderr.count("resuming cut") == 1
    _assert_same_losses(one.runs / "simclr", two.runs / "cut", rel=1e-2)  # see above
    record = json.loads((two.runs / "cut" / "config.json").read_text())
    assert record["world_size"] == 1 and record["resumed"][0]["world_size"] == 2

    # embed: ONE file, row order and features identical to one process
    from dermctl.eval.embed import embed

    ref = embed(one, model, [str(task)], batch_size=2, device="cpu", num_workers=0)[0].path
    from dermctl.eval.embeddings import read_attrs, read_embeddings

    out = two.embedding_path("simclr", "lesions")
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "lesions.h5",
        "lesions.h5.sha256",
    ]  # one file and its seal
    e1, e2 = read_embeddings(ref), read_embeddings(out)
    assert e2.features.shape == (7, e1.features.shape[1])
    assert np.allclose(e1.features, e2.features, atol=1e-5)
    assert list(e1.labels) == list(e2.labels) and list(e1.paths) == list(e2.paths)
    assert read_attrs(out)["complete"] is True and proc.stdout.count("lesions.h5") == 1

    # finetune under DDP: one run folder and one result, written and printed by rank 0
    result = two.result_path("finetune", "simclr", "lesions")
    assert json.loads(result.read_text())["protocol"] == "finetune"
    ft_run = two.runs / "finetune-simclr-lesions"
    assert json.loads((ft_run / "config.json").read_text())["world_size"] == 2
    assert len(_rows(ft_run / "metrics.csv")) == 2
    assert proc.stdout.count("result: ") == 1  # (rich wraps the long path)


@pytest.mark.slow
def test_a_signal_that_reaches_one_process_stops_every_process_after_the_same_step(tmp_path):
    """torchrun, SIGINT to rank 1 only, after its first step: the stop is voted in the next step's loss
    all-reduce, so both processes stop after step 2 and rank 0 writes that mid-epoch checkpoint (before,
    rank 1 left alone and rank 0 failed in its next collective, with no checkpoint of the epoch)."""
    imgs = make_images(tmp_path / "img", 20, size=40)
    corpus = make_corpus(tmp_path / "corpus.csv", imgs, ["train"] * 16 + ["val"] * 4)
    ws = Workspace.at(tmp_path / "ws")
    ws.ensure()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    script = Path(__file__).parent / "ddp_scripts" / "sigint_one_rank.py"
    proc = subprocess.run(
        [*cmd, str(script), str(ws.root), str(corpus)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0  # both ranks exit 130
    outcomes = [(ws.root / f"rank{r}.outcome").read_text() for r in (0, 1)]
    assert outcomes == ["interrupted", "interrupted"], proc.stderr[-2000:]
    state = load_checkpoint(ws.runs / "cut" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch"], state["world_size"]) == (0, 2, 2)  # 4 steps per epoch
    assert json.loads((ws.runs / "cut" / "run.json").read_text())["status"] == "interrupted"
