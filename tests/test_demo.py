"""Demo data: seeded, laid out like a published set, grouped by patient, fast."""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image

from dermctl.data.demo import DEMO_CLASSES, generate_demo, generate_unlabelled
from dermctl.provenance import sha256_file


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(tmp_path: Path) -> None:
    meta = generate_demo(tmp_path / "d", n_per_class=10, size=48, seed=0)
    assert meta == tmp_path / "d" / "metadata.csv"
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image_id", "patient_id", "label", "path"]
    assert len(rows) == 10 * len(DEMO_CLASSES)
    assert {r["label"] for r in rows} == {c.name for c in DEMO_CLASSES}
    per_patient: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        assert r["path"] == f"images/{r['label']}/{r['image_id']}.jpg"
        path = tmp_path / "d" / r["path"]
        with Image.open(path) as im:
            assert im.size == (48, 48) and im.format == "JPEG"
        per_patient[r["patient_id"]].append(r)
    assert all(1 <= len(v) <= 3 for v in per_patient.values())
    assert any(len(v) > 1 for v in per_patient.values())
    assert all(len({r["label"] for r in v}) == 1 for v in per_patient.values())


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate_demo(tmp_path / "a", n_per_class=5, size=32, seed=3)
    generate_demo(tmp_path / "b", n_per_class=5, size=32, seed=3)
    generate_demo(tmp_path / "c", n_per_class=5, size=32, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_unlabelled_is_flat_and_disjoint(tmp_path: Path) -> None:
    generate_demo(tmp_path / "d", n_per_class=10, size=48, seed=0)
    root = generate_unlabelled(tmp_path / "u", n=30, size=48, seed=0)
    files = sorted(root.iterdir())
    assert len(files) == 30 and all(p.is_file() and p.suffix == ".jpg" for p in files)
    labelled = set(_files(tmp_path / "d").values())
    assert not labelled & {sha256_file(p) for p in files}


def test_classes_differ_in_colour(tmp_path: Path) -> None:
    import numpy as np

    generate_demo(tmp_path / "d", n_per_class=8, size=48, seed=0)
    means = {}
    for cls in DEMO_CLASSES:
        centre = [
            np.asarray(Image.open(p))[16:32, 16:32].reshape(-1, 3).mean(0)
            for p in (tmp_path / "d" / "images" / cls.name).iterdir()
        ]
        means[cls.name] = np.mean(centre, axis=0)
    assert means["vascular"][0] - means["vascular"][1] > means["nevus"][0] - means["nevus"][1]  # redder
    assert means["melanoma"].sum() < means["keratosis"].sum()  # darker


def test_300_images_under_two_seconds(tmp_path: Path) -> None:
    # CPU time of this process: the shared test machine's load must not fail the test
    start = time.process_time()
    generate_demo(tmp_path / "d", n_per_class=75, size=64, seed=0)
    assert time.process_time() - start < 2.0
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 300
