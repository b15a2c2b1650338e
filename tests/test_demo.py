"""Demo data: seeded, laid out like a published set, grouped by patient, fast; the label is in the lesion's
morphology and nowhere in the nuisances (skin type, lighting, colour)."""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.data.demo import DEMO_CLASSES, SKIN_TONES, generate_demo, generate_unlabelled
from dermctl.provenance import sha256_file


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_metadata(tmp_path: Path) -> None:
    meta = generate_demo(tmp_path / "d", n_per_class=10, size=48, seed=0)
    assert meta == tmp_path / "d" / "metadata.csv"
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image_id", "patient_id", "label", "path", "skin_type"]
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
    assert all(len({r["skin_type"] for r in v}) == 1 for v in per_patient.values())


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


def _rows(meta: Path) -> list[dict[str, str]]:
    with open(meta, newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_skin_type_in_every_class_and_independent_of_it(tmp_path: Path) -> None:
    from scipy.stats import chi2_contingency

    rows = _rows(generate_demo(tmp_path / "d", n_per_class=120, size=32, seed=0))
    names = [c.name for c in DEMO_CLASSES]
    images = np.zeros((len(DEMO_CLASSES), len(SKIN_TONES)), dtype=int)
    patients = np.zeros_like(images)
    seen: set[str] = set()
    for r in rows:
        cell = names.index(r["label"]), int(r["skin_type"]) - 1
        images[cell] += 1
        if r["patient_id"] not in seen:  # skin type is a patient's: test independence over patients
            seen.add(r["patient_id"])
            patients[cell] += 1
    assert (images > 0).all(), images  # types I-VI in every class, so the skin-type breakdown has every cell
    assert chi2_contingency(patients).pvalue > 0.01, patients  # skin type carries no label


def _colour_features(root: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """Per image: mean RGB, the darkest-decile RGB (the lesion) and the border-ring RGB (the skin)."""
    out = []
    for r in rows:
        a = np.asarray(Image.open(root / r["path"]), dtype=np.float32)
        flat = a.reshape(-1, 3)
        dark = flat[np.argsort(flat.sum(1))[: len(flat) // 10]].mean(0)
        ring = np.concatenate([a[:4].reshape(-1, 3), a[-4:].reshape(-1, 3)]).mean(0)
        out.append(np.concatenate([flat.mean(0), dark, ring]))
    return np.asarray(out)


def test_colour_and_lighting_do_not_tell_the_classes_apart(tmp_path: Path) -> None:
    # The nuisances (skin tone, lighting, white balance, pigment strength) are drawn alike for every class:
    # a classifier on colour statistics alone stays near chance (1/4), so pretraining that learns to ignore
    # colour loses nothing. The first generator coloured each class differently (this scored 0.71).
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = _rows(generate_demo(tmp_path / "d", n_per_class=60, size=48, seed=0))
    x = _colour_features(tmp_path / "d", rows)
    y = np.asarray([r["label"] for r in rows])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    assert cross_val_score(clf, x, y, cv=5).mean() < 0.45


def test_lesions_differ_in_shape_and_pattern(tmp_path: Path) -> None:
    # The label is in the morphology: the dermatofibroma's pale centre, the melanoma's irregular border.
    from dermctl.data.demo import Lesion, draw_lesion, render_lesion

    rng = np.random.default_rng(0)
    by_name = {c.name: c for c in DEMO_CLASSES}

    def centre_vs_rim(cls_name: str) -> float:
        # a large, centred lesion on mid skin without hairs: compare the centre to a ring at 60 % radius
        values = []
        for _ in range(20):
            lesion: Lesion = draw_lesion(rng, by_name[cls_name])
            img = render_lesion(rng, 64, lesion, 3).astype(np.float32).sum(2)
            values.append(img[28:36, 28:36].mean() - img.mean())
        return float(np.mean(values))

    # the pale centre makes the dermatofibroma's middle lighter relative to its image than a nevus's
    assert centre_vs_rim("dermatofibroma") > centre_vs_rim("nevus")
    irregular = np.mean([abs(a) for a, _ in draw_lesion(rng, by_name["melanoma"]).harmonics])
    regular = np.mean([abs(a) for a, _ in draw_lesion(rng, by_name["nevus"]).harmonics])
    assert irregular > 5 * regular


def test_random_init_features_see_the_nuisances_not_the_label(tmp_path: Path) -> None:
    # What makes pretraining worth it here (the demo's margins themselves: benchmarks/demo.py): features of a
    # randomly initialised ResNet-18, taken as `dermctl embed` takes them, find an image's skin type in its
    # nearest neighbour far above chance (1/6) but not its class (1/4).
    import torch

    from dermctl.models.backbone import IMAGENET_MEAN, IMAGENET_STD, create_backbone, extract_features
    from dermctl.models.transforms import eval_transform

    rows = _rows(generate_demo(tmp_path / "d", n_per_class=60, size=64, seed=0))
    torch.manual_seed(0)
    model = create_backbone("resnet18", "random").eval()
    tf = eval_transform(32, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(tmp_path / "d" / r["path"]).convert("RGB")) for r in rows])
        feats = torch.nn.functional.normalize(extract_features(model, x, "avgpool"), dim=1).numpy()
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    labels = np.asarray([r["label"] for r in rows])
    skin = np.asarray([r["skin_type"] for r in rows])
    assert (labels[nearest] == labels).mean() < 0.4
    assert (skin[nearest] == skin).mean() > 0.35


def test_patients_are_groups_that_never_cross_splits(tmp_path: Path) -> None:
    from dermctl.data.ingest import IngestOptions, run_ingest
    from dermctl.data.manifest import read_manifest
    from dermctl.workspace import Workspace

    generate_demo(tmp_path / "d", n_per_class=40, size=32, seed=0)
    ws = Workspace.at(tmp_path / "ws")
    ws.ensure()
    run_ingest(
        "csv",
        tmp_path / "d",
        ws,
        IngestOptions(
            name="t", label_column="label", group_column="patient_id", workers=1, test_fraction=0.3
        ),
    )
    manifest = read_manifest(ws.manifests / "t.csv")
    assert "skin_type" in manifest.extra_columns  # carried, so the skin-type breakdown appears
    splits: dict[str, set[str]] = defaultdict(set)
    for row in manifest.rows:
        splits[row.group].add(row.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {row.split for row in manifest.rows} == {"train", "val", "test"}


def test_300_images_under_two_seconds(tmp_path: Path) -> None:
    # CPU time of this process: the shared test machine's load must not fail the test
    start = time.process_time()
    generate_demo(tmp_path / "d", n_per_class=75, size=64, seed=0)
    assert time.process_time() - start < 2.0
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 300
