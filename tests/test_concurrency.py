"""Two real `dermctl` processes writing the same workspace file at once: no torn or mixed file. Each
pair either both succeeds with the same result, or one gets the documented lock message (exit 5).
(Two `knn` runs are the same case as two `embed` runs: both write via workspace.atomic_path.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import helpers_methods  # noqa: F401  (registers `tinytest`)
import numpy as np
import pytest
from helpers_methods import make_corpus, make_images
from test_cli_eval import make_task
from test_crash_safety import EMBED, KNN, cli, h5_features, spawn, temps

from dermctl.runtime.checkpoint import load_checkpoint
from dermctl.workspace import read_json


def run_pair(root: Path, *args: str) -> list[tuple[int, str]]:
    procs = [spawn(root, *args), spawn(root, *args)]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=180)
        out.append((p.returncode, err))
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    make_task(root)
    cli(root, *EMBED)
    cli(root, *KNN)
    return root


def test_two_embeds_of_the_same_model_and_task(ws: Path, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(ws, root)
    target = root / "embeddings" / "random-resnet10t" / "toy.h5"
    target.unlink()
    results = run_pair(root, *EMBED)
    assert [code for code, _ in results] == [0, 0], results
    np.testing.assert_array_equal(
        h5_features(target), h5_features(ws / "embeddings" / "random-resnet10t" / "toy.h5")
    )
    assert temps(target.parent) == []


def test_two_pretrains_of_the_same_run_one_refused_with_exit_5(tmp_path: Path) -> None:
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 9))
    root = tmp_path / "ws"
    args = ["pretrain", "--method", "tinytest", "--data", str(man), "--epochs", "3", "--device", "cpu"]
    results = run_pair(root, *args, "--batch-size", "3")
    codes = sorted(code for code, _ in results)
    assert codes == [0, 5], results
    refused = next(err for code, err in results if code == 5)
    assert "Traceback" not in refused
    lines = [line for line in refused.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, refused
    # locked while the other runs, or finished and protected from overwriting: either names the run
    assert "tinytest-resnet10t" in lines[0]
    run = root / "runs" / "tinytest-resnet10t"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] is not None
    assert read_json(run / "run.json")["status"] == "finished"
    assert not (run / ".lock").exists()
