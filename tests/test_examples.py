"""The example scripts run end to end against fake data sets at toy size, so they never rot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import make_fitzpatrick17k, make_ham10000, make_isic_archive, make_mednode, make_pad_ufes_20

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "colorme": {"backbone": "resnet10t", "init": "random", "image_size": 32, "batch_size": 8},
    "dino": {
        "backbone": "vit_tiny_patch16_224",
        "image_size": 32,
        "local_crop_size": 16,
        "local_crops_number": 2,
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "batch_size": 8,
        "warmup_teacher_temp_epochs": 0,
    },
}
COMMON = {"epochs": 1, "warmup_epochs": 0, "num_workers": 0, "patience": 0}


def _toml(values: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "dermctl"  # the script calls `dermctl`; run the one of this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dermctl "$@"\n')
    shim.chmod(0o755)
    env = dict(
        os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1", DERMCTL_OFFLINE="1"
    )
    env.update(extra)
    return env


@pytest.mark.slow
def test_reproduce_study_script_on_fake_data(tmp_path):
    data = tmp_path / "data"
    ham = make_ham10000(data / "HAM10000", n_lesions=21, n_test=14, junk=False)
    make_pad_ufes_20(data / "PAD-UFES-20", n_patients=18)
    make_fitzpatrick17k(data / "fitzpatrick17k", n=36, with_missing=1)
    ham_images = sorted(ham.images.values())[:3]
    make_isic_archive(
        data / "ISIC", ids=16, include_images_from=ham_images[:2], reencoded_from=ham_images[2:]
    )
    make_mednode(data / "MED-NODE", n_melanoma=4, n_naevus=4)
    configs = tmp_path / "configs"
    configs.mkdir()
    for method, values in TINY.items():
        (configs / f"{method}.toml").write_text(_toml({**values, **COMMON}))
    work = tmp_path / "study"
    env = _env(
        tmp_path,
        DATA=str(data),
        WORKDIR=str(work),
        METHODS="colorme dino",
        CONFIG_DIR=str(configs),
        EMBED_ARGS="--image-size 32 --batch-size 16",
        FINETUNE_ARGS="--epochs 1 --image-size 32 --batch-size 16 --workers 0 --bootstrap 20",
        SHOTS="1,2,all",
        REPEATS="2",
    )
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "reproduce_study.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = (work / "reports" / "table2.md").read_text()
    for task in ("Fitzpatrick17k", "PAD-UFES-20", "HAM10000"):
        assert task in table
    for row in ("stratified random", "ColorMe", "DINO", "random"):
        assert row in table
    # the ISIC corpus lost its HAM10000 copies (same bytes and re-encoded)
    report = json.loads((work / "manifests" / "isic-archive.report.json").read_text())
    assert json.dumps(report).count("ham10000") >= 1
    isic = (work / "manifests" / "isic-archive.csv").read_text()
    for path in ham_images[:2]:
        assert path.stem not in isic
    assert (work / "reports" / "figure1.png").is_file() and (work / "reports" / "report.html").is_file()
    assert "unavailable" in out.stderr  # ImageNet offline: said, not faked
    assert not (work / "embeddings" / "imagenet-resnet50").exists()


@pytest.mark.slow
def test_own_folder_script_on_fake_data(tmp_path):
    from dermctl.data.demo import generate_demo, generate_unlabelled

    labelled = generate_demo(tmp_path / "labelled", n_per_class=10, size=48, seed=3).parent / "images"
    unlabelled = generate_unlabelled(tmp_path / "unlabelled", n=30, size=48, seed=4)
    shutil.copy(next(labelled.rglob("*.jpg")), unlabelled / "copy_of_a_labelled_image.jpg")
    configs = {
        "METHOD": "dino",
        "PRETRAIN_ARGS": " ".join(
            f"--set {k}={json.dumps(v)}" for k, v in {**TINY["dino"], **COMMON}.items() if k != "backbone"
        ),
        "EMBED_ARGS": "--image-size 32 --batch-size 16",
        "FINETUNE_ARGS": "--epochs 1 --image-size 32 --batch-size 16 --workers 0 --bootstrap 20",
        "SHOTS": "1,2,all",
        "REPEATS": "2",
    }
    work = tmp_path / "mine"
    env = _env(tmp_path, IMAGES=str(unlabelled), LABELLED=str(labelled), WORKDIR=str(work), **configs)
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "own_folder.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "reports" / "report.html").is_file()
    corpus = (work / "manifests" / "corpus.csv").read_text()
    assert "copy_of_a_labelled_image" not in corpus  # the labelled images never enter pretraining
    assert (work / "results" / "knn" / "dino" / "task.json").is_file()


@pytest.mark.slow
def test_ablation_script_on_fake_data(tmp_path):
    """examples/ablation.sh at toy size: both backbones for SimCLR (DINO and BYOL run the same loop), ColorMe
    and iBOT only where they can run, and the report's method x backbone grid."""
    from dermctl.data.demo import generate_demo, generate_unlabelled

    labelled = generate_demo(tmp_path / "labelled", n_per_class=8, size=48, seed=3).parent / "images"
    unlabelled = generate_unlabelled(tmp_path / "unlabelled", n=24, size=48, seed=4)
    work = tmp_path / "abl"
    env = _env(tmp_path)
    run = [
        sys.executable,
        "-m",
        "dermctl",
        "--workdir",
        str(work),
        "--quiet",
        "ingest",
        "--dataset",
        "folder",
    ]
    for args in (
        ["--root", str(labelled), "--name", "task", "--role", "task"],
        ["--root", str(unlabelled), "--name", "corpus", "--unlabelled", "--exclude", "task"],
    ):
        done = subprocess.run(run + args, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    configs = tmp_path / "configs"
    configs.mkdir()
    tiny = {
        **TINY,
        "ibot": {**TINY["dino"], "patch_out_dim": 64},
        "simclr": {"batch_size": 8, "image_size": 32},
    }
    for method, values in tiny.items():
        values = {k: v for k, v in values.items() if k not in ("backbone", "init")}
        (configs / f"{method}.toml").write_text(_toml({**values, **COMMON}))
    env = _env(
        tmp_path,
        CORPUS=str(work / "manifests" / "corpus.csv"),
        TASK="task",
        WORKDIR=str(work),
        METHODS="simclr colorme ibot",
        BACKBONES="resnet10t vit_tiny_patch16_224",
        CONFIG_DIR=str(configs),
        EMBED_ARGS="--image-size 32 --batch-size 16",
        SHOTS="1,2,all",
        REPEATS="2",
    )
    out = subprocess.run(
        ["bash", str(ROOT / "examples" / "ablation.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "skipping colorme on vit_tiny_patch16_224" in out.stderr
    assert "skipping ibot on resnet10t" in out.stderr
    runs = sorted(p.name for p in (work / "runs").iterdir())
    assert runs == [
        "colorme-resnet10t",
        "ibot-vit_tiny_patch16_224",
        "simclr-resnet10t",
        "simclr-vit_tiny_patch16_224",
    ]
    page = (work / "reports" / "report.html").read_text()
    section = page[page.index('id="ablation"') : page.index('id="data"')]
    assert "resnet10t" in section and "vit_tiny_patch16_224" in section and "SimCLR" in section
    assert "<td>random</td>" in section  # each backbone's own baseline row
    again = subprocess.run(  # re-running skips finished runs instead of failing on them
        ["bash", str(ROOT / "examples" / "ablation.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "simclr-resnet10t: pretrained already" in again.stderr
