"""dermctl.train.health: the kNN monitor scores val against train, never reads test, refuses without val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dermctl.data.manifest import Manifest, Row, write_manifest
from dermctl.errors import EXIT_DATA, DataError
from dermctl.models.backbone import BackboneMeta
from dermctl.train import health
from dermctl.train.health import KnnMonitor

COLOURS = {"c0": (220, 30, 30), "c1": (30, 30, 220)}  # red / blue: trivially separable by mean colour


def _image(folder: Path, name: str, colour: tuple[int, int, int], seed: int) -> str:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-20, 21, (16, 16, 3)), 0, 255).astype(np.uint8)
    p = folder / f"{name}.png"
    Image.fromarray(arr).save(p)
    return str(p)


def _task(tmp_path: Path, val: str = "same", test: str = "missing") -> Path:
    """Train 3 + 3 images; val 2 + 2 labelled by colour ("same"), with swapped labels ("swapped"),
    unlabelled ("unlabelled") or absent ("none"); test rows point at files that do not exist."""
    img = tmp_path / "img"
    img.mkdir()
    rows = []
    for i in range(6):
        label = f"c{i % 2}"
        rows.append(Row(path=_image(img, f"tr{i}", COLOURS[label], i), label=label, split="train"))
    if val != "none":
        for i in range(4):
            colour = f"c{i % 2}"
            label = {"same": colour, "swapped": f"c{1 - i % 2}", "unlabelled": ""}[val]
            rows.append(Row(path=_image(img, f"va{i}", COLOURS[colour], 10 + i), label=label, split="val"))
    for i in range(4):
        rows.append(Row(path=str(img / f"missing_test{i}.png"), label=f"c{i % 2}", split="test", role="task"))
    path = tmp_path / "task.csv"
    write_manifest(Manifest(name="task", rows=rows), path)
    return path


class MeanColour(nn.Module):
    """A stand-in backbone: the mean of each channel (avgpool rule: model(x) is the feature)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


META = BackboneMeta(timm_name="mean-colour", feature_rule="avgpool", input_size=16)


def test_monitor_scores_val_and_never_opens_test(tmp_path, monkeypatch):
    manifest = _task(tmp_path, val="same")
    opened: list[str] = []
    real_open = health.open_rgb

    def spy(path):
        opened.append(Path(path).name)
        return real_open(path)

    monkeypatch.setattr(health, "open_rgb", spy)
    monitor = KnnMonitor(manifest)  # the test images do not exist: reading them would fail here or below
    assert len(monitor.train) == 6 and len(monitor.val) == 4
    model = MeanColour()
    model.train()
    score = monitor.score(model, META, torch.device("cpu"))
    assert score == pytest.approx(1.0)
    assert model.training  # mode restored
    assert sorted(opened) == sorted([f"tr{i}.png" for i in range(6)] + [f"va{i}.png" for i in range(4)])
    assert not [n for n in opened if "test" in n]


def test_monitor_queries_are_the_val_rows(tmp_path):
    """Val labelled against their colour: a monitor scoring val gets 0; one scoring train would get 1."""
    monitor = KnnMonitor(_task(tmp_path, val="swapped"))
    assert monitor.score(MeanColour(), META, torch.device("cpu")) == pytest.approx(0.0)


@pytest.mark.parametrize("val", ["none", "unlabelled"])
def test_monitor_refuses_a_task_without_labelled_val(tmp_path, val):
    manifest = _task(tmp_path, val=val)
    with pytest.raises(DataError) as err:
        KnnMonitor(manifest)
    msg = err.value.message
    assert err.value.exit_code == EXIT_DATA
    assert "\n" not in msg and str(manifest) in msg
    assert "--monitor-task" in msg and "no labelled val rows" in msg and "--val-fraction" in msg


def test_monitor_score_is_the_weighted_knn_macro_f1() -> None:
    """The monitor's kNN equals DINO's weighted vote computed by brute force, scored by scikit-learn."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 5
    train_y = np.repeat(np.arange(3), 10)
    test_y = np.repeat(np.arange(3), 4)
    train_x = centres[train_y] + rng.normal(size=(30, 8))
    assert health.knn_macro_f1(train_x, train_y, centres[test_y] + rng.normal(size=(12, 8)), test_y, 3) == 1.0
    noisy = rng.normal(size=(12, 8))
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    b = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    sim = b @ a.T
    top = np.argsort(-sim, axis=1)[:, :20]
    votes = np.zeros((12, 3))
    np.add.at(
        votes,
        (np.repeat(np.arange(12), 20), train_y[top].ravel()),
        np.exp(np.take_along_axis(sim, top, 1) / 0.07).ravel(),
    )
    expected = f1_score(test_y, votes.argmax(1), average="macro", labels=[0, 1, 2], zero_division=0)
    assert health.knn_macro_f1(train_x, train_y, noisy, test_y, 3) == pytest.approx(expected)
