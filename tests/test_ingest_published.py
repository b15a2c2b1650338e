"""End to end through the CLI: published layouts (fakes) -> `dermctl ingest` -> grouped, overlap-free manifests."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from fakes import make_fitzpatrick17k, make_ham10000, make_isic_archive, make_pad_ufes_20
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.data.manifest import read_manifest

runner = CliRunner()


def ingest(workdir: Path, *args: str) -> None:
    result = runner.invoke(app, ["--workdir", str(workdir), "ingest", *args])
    assert result.exit_code == 0, result.output


def test_ham10000_keeps_the_official_test_set_and_no_lesion_straddles(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path / "HAM10000", n_lesions=21, with_missing=1, corrupt=True)
    work = tmp_path / "W"
    ingest(work, "--dataset", "ham10000", "--root", str(tmp_path / "HAM10000"))
    manifest = read_manifest(work / "manifests" / "ham10000.csv")
    by_id = {r.image_id: r for r in manifest.rows}
    assert {i for i, r in by_id.items() if r.split == "test"} == fake.test_ids
    assert all(r.label == fake.labels[i] for i, r in by_id.items())
    assert set(manifest.classes) == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    # every lesion (lesion_id, as published) lies on one side of the split
    lesion_sides: dict[str, set[str]] = defaultdict(set)
    for image_id, row in by_id.items():
        if image_id not in fake.test_ids:
            lesion_sides[fake.groups[image_id]].add(row.split)
    assert lesion_sides and all(len(sides) == 1 for sides in lesion_sides.values())
    assert {r.split for r in manifest.rows} == {"train", "val", "test"}
    # broken and missing files are reported, not listed
    assert not {str(p) for p in fake.broken} & {r.path for r in manifest.rows}
    report = json.loads((work / "manifests" / "ham10000.report.json").read_text())
    assert report["missing_images"] == fake.missing
    assert "one-hot" in report["variant"]
    assert {r.extras["dx_type"] for r in manifest.rows} >= {"histo", "follow_up"}


def test_pad_ufes_20_no_patient_on_two_sides(tmp_path: Path) -> None:
    fake = make_pad_ufes_20(tmp_path / "pad", n_patients=30, variant="flat")
    work = tmp_path / "W"
    ingest(work, "--dataset", "pad-ufes-20", "--root", str(tmp_path / "pad"))
    manifest = read_manifest(work / "manifests" / "pad-ufes-20.csv")
    assert len(manifest.rows) == len(fake.images)
    assert set(manifest.classes) == {"ACK", "BCC", "MEL", "NEV", "SCC", "SEK"}
    patient_sides: dict[str, set[str]] = defaultdict(set)
    for row in manifest.rows:
        patient_sides[fake.groups[row.image_id]].add(row.split)
    assert all(len(sides) == 1 for sides in patient_sides.values())
    assert "test" in {r.split for r in manifest.rows}
    assert {r.extras["skin_type"] for r in manifest.rows} <= {"1", "2", "3", "4", "5", "6", "-1"}


def test_isic_archive_loses_every_ham10000_image_exact_or_reencoded(tmp_path: Path) -> None:
    ham = make_ham10000(tmp_path / "HAM10000", n_lesions=14, test_format="onehot")
    work = tmp_path / "W"
    ingest(work, "--dataset", "ham10000", "--root", str(tmp_path / "HAM10000"))
    train_sources = sorted(p for i, p in ham.images.items() if i not in ham.test_ids)
    test_sources = sorted(ham.images[i] for i in ham.test_ids)
    isic = make_isic_archive(
        tmp_path / "isic",
        ids=8,
        include_images_from=train_sources[:3] + test_sources[:2],
        reencoded_from=train_sources[3:6] + test_sources[2:4],
    )
    copies = {i for i, e in isic.extras.items() if "copy_of" in e}
    assert len(copies) == 10
    ingest(
        work,
        "--dataset",
        "isic-archive",
        "--root",
        str(tmp_path / "isic"),
        "--exclude",
        str(work / "manifests" / "ham10000.csv"),
    )
    manifest = read_manifest(work / "manifests" / "isic-archive.csv")
    kept = {r.image_id for r in manifest.rows}
    assert not kept & copies
    assert kept == set(isic.images) - copies
    assert all(r.label == "" and r.role == "corpus" for r in manifest.rows)
    assert {r.extras["publisher_label"] for r in manifest.rows} <= {
        "nevus",
        "melanoma",
        "seborrheic keratosis",
    }
    report = json.loads((work / "manifests" / "isic-archive.report.json").read_text())
    assert len(report["overlap"]) == len(copies)
    # exact copies go by bytes; re-encoded, resized copies (fresh ids) only by perceptual hash
    assert {o["by"] for o in report["overlap"]} == {"sha256", "near-duplicate"}


def test_fitzpatrick17k_reports_dead_links_and_keeps_skin_type(tmp_path: Path) -> None:
    fake = make_fitzpatrick17k(tmp_path / "fitz", n=36, with_missing=4)
    work = tmp_path / "W"
    ingest(work, "--dataset", "fitzpatrick17k", "--root", str(tmp_path / "fitz"), "--granularity", "three")
    manifest = read_manifest(work / "manifests" / "fitzpatrick17k.csv")
    assert {r.image_id: r.extras["skin_type"] for r in manifest.rows} == {
        i: fake.extras[i]["skin_type"] for i in fake.images
    }
    assert set(manifest.classes) == {"benign", "malignant", "non-neoplastic"}
    report = json.loads((work / "manifests" / "fitzpatrick17k.report.json").read_text())
    assert sorted(report["missing_images"]) == sorted(fake.missing)
