"""A fixed --seed gives the same artifacts (manifests byte for byte, kNN / probe results and, on CPU,
pretraining losses), and every artifact records what produced it: command line, resolved config,
library versions and the hashes of its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import helpers_methods  # noqa: F401  (registers `tinytest`)
import pytest
from helpers_methods import make_corpus, make_images
from test_cli_eval import make_task
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.data.demo import generate_demo
from dermctl.provenance import sha256_file
from dermctl.workspace import read_json

EMBED = ["embed", "--model", "random", "--backbone", "resnet10t", "--image-size", "32", "--device", "cpu"]
EMBED += ["--workers", "0"]
KNN = ["knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3", "--seed", "4"]
PROBE = ["probe", "--task", "toy", "--shots", "1,all", "--seed", "4"]


def cli(root: Path, *args: str):
    r = CliRunner().invoke(app, ["-C", str(root), *args])
    assert r.exit_code == 0, r.output
    return r


def assert_provenance(record: dict, where: str, inputs: tuple[str, ...] = ()) -> None:
    prov = record["provenance"]
    assert prov["command"], where
    assert prov["versions"]["dermctl"] and prov["versions"]["torch"], where
    assert isinstance(prov["config"], dict) and prov["config"], where
    assert prov["created"], where
    hashes = {**prov.get("inputs", {}), **record.get("inputs", {})}
    for name in inputs:
        assert len(str(hashes.get(name, ""))) == 64, (where, name, hashes)


@pytest.fixture(scope="module")
def two_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same chain (embed, knn, probe) run in two workspaces on the same task."""
    roots = []
    for name in ("a", "b"):
        root = tmp_path_factory.mktemp(name)
        make_task(root)
        cli(root, *EMBED)
        cli(root, *KNN)
        cli(root, *PROBE)
        roots.append(root)
    return roots[0], roots[1]


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def test_ingest_same_seed_byte_identical_manifest(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_demo(data, n_per_class=8, size=40)
    args = [
        "ingest",
        "--dataset",
        "csv",
        "--root",
        str(data / "metadata.csv"),
        "--name",
        "demo",
        "--seed",
        "7",
    ]
    args += ["--label-column", "label", "--group-column", "patient_id"]
    cli(tmp_path / "a", *args)
    cli(tmp_path / "b", *args)
    man_a = tmp_path / "a" / "manifests" / "demo.csv"
    assert man_a.read_bytes() == (tmp_path / "b" / "manifests" / "demo.csv").read_bytes()
    report = read_json(tmp_path / "a" / "manifests" / "demo.report.json")
    assert_provenance(report, "ingest report")
    assert "7" in json.dumps(report["provenance"]["config"])  # the seed is recorded


def test_knn_and_probe_same_seed_same_result(two_ws: tuple[Path, Path]) -> None:
    a, b = two_ws
    # the two workspaces' files live in different folders: compare what does not name a folder
    for protocol in ("knn", "linear"):
        ra = read_json(a / "results" / protocol / "random-resnet10t" / "toy.json")
        rb = read_json(b / "results" / protocol / "random-resnet10t" / "toy.json")
        assert ra["metrics"] == rb["metrics"], protocol
        assert ra.get("curve") == rb.get("curve"), protocol
        assert ra["test_split_sha256"] == rb["test_split_sha256"]


def test_knn_rerun_in_place_is_identical(two_ws: tuple[Path, Path]) -> None:
    a, _ = two_ws
    path = a / "results" / "knn" / "random-resnet10t" / "toy.json"
    before = read_json(path)
    cli(a, *KNN, "--force")
    assert without(read_json(path), "provenance") == without(before, "provenance")


def test_pretrain_cpu_losses_identical(tmp_path: Path) -> None:
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 9))
    args = ["pretrain", "--method", "tinytest", "--data", str(man), "--epochs", "2", "--device", "cpu"]
    args += ["--batch-size", "3", "--set", "seed=3"]
    cli(tmp_path / "a", *args)
    cli(tmp_path / "b", *args)
    run_a = tmp_path / "a" / "runs" / "tinytest-resnet10t"
    run_b = tmp_path / "b" / "runs" / "tinytest-resnet10t"

    def losses(run: Path) -> list[tuple[str, str]]:
        lines = (run / "metrics.csv").read_text().splitlines()
        head = lines[0].split(",")
        i, j = head.index("train_loss"), head.index("val_loss")
        return [(row.split(",")[i], row.split(",")[j]) for row in lines[1:]]

    assert losses(run_a) == losses(run_b) and len(losses(run_a)) == 2
    run = read_json(run_a / "run.json")
    config = read_json(run_a / "config.json")
    assert config["config"]["seed"] == 3 and config["config"]["method"] == "tinytest"
    assert run["status"] == "finished"
    record = config
    assert_provenance(record, "pretrain run")
    assert sha256_file(man) in json.dumps(record["provenance"]["inputs"])
    meta = read_json(run_a / "backbone.json")
    assert meta["sha256"] == sha256_file(run_a / "backbone.safetensors")


def test_every_evaluation_artifact_records_provenance(two_ws: tuple[Path, Path]) -> None:
    a, _ = two_ws
    with h5py.File(a / "embeddings" / "random-resnet10t" / "toy.h5", "r") as f:
        attrs = dict(f.attrs)
    assert attrs["manifest_sha256"] == sha256_file(a / "manifests" / "toy.csv")
    assert len(attrs["checkpoint_sha256"]) == 64 and attrs["dermctl_version"]
    assert attrs["feature_rule"] == "avgpool" and int(attrs["image_size"]) == 32
    for protocol in ("knn", "linear"):
        record = read_json(a / "results" / protocol / "random-resnet10t" / "toy.json")
        assert_provenance(record, protocol, inputs=("embeddings", "manifest"))
        assert record["config"]["seed"] == 4
