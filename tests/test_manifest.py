from __future__ import annotations

import pytest

from dermctl.data.manifest import (
    Manifest,
    Row,
    fill_hashes,
    find_task,
    read_manifest,
    to_csv_text,
    validate_task,
    write_manifest,
)
from dermctl.errors import DataError
from dermctl.provenance import sha256_file


def _rows():
    return [
        Row(
            path="a.jpg",
            label="mel",
            split="train",
            group="p1",
            source="x",
            role="task",
            extras={"skin_type": "2"},
        ),
        Row(
            path="b.jpg",
            label="nv",
            split="train",
            group="p2",
            source="x",
            role="task",
            extras={"skin_type": "5"},
        ),
        Row(
            path="c.jpg",
            label="mel",
            split="test",
            group="p3",
            source="x",
            role="task",
            extras={"skin_type": "-1"},
        ),
        Row(
            path="d.jpg",
            label="nv",
            split="test",
            group="p4",
            source="x",
            role="task",
            extras={"skin_type": "1"},
        ),
    ]


def test_round_trip_keeps_extras_and_order(tmp_path):
    m = Manifest(name="t", rows=_rows(), extra_columns=["skin_type"])
    path = write_manifest(m, tmp_path / "t.csv")
    back = read_manifest(path)
    assert to_csv_text(back) == to_csv_text(m)
    assert back.classes == ["mel", "nv"]
    assert back.rows[2].extras == {"skin_type": "-1"}
    assert back.role == "task"
    assert back.counts()["test"] == {"mel": 1, "nv": 1}


def test_hand_made_manifest_needs_only_path(tmp_path):
    (tmp_path / "img.png").write_bytes(b"fake image bytes")
    csv = tmp_path / "mine.csv"
    csv.write_text("path\nimg.png\n")
    m = read_manifest(csv)
    assert m.rows[0].split == "train" and m.rows[0].source == "mine"
    assert m.role == "corpus"
    assert m.resolve(m.rows[0]) == tmp_path / "img.png"
    fill_hashes(m)
    assert m.rows[0].sha256 == sha256_file(tmp_path / "img.png")


def test_role_inferred_for_labelled_with_test(tmp_path):
    csv = tmp_path / "task.csv"
    csv.write_text("path,label,split\na.jpg,x,train\nb.jpg,y,test\n")
    assert read_manifest(csv).role == "task"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,label\na,b\n", "no 'path' column"),
        ("path,split\na.jpg,holdout\n", "split 'holdout'"),
        ("path\n", "no rows"),
        ("path,width\na.jpg,wide\n", "width/height"),
        ("path,role\na.jpg,eval\n", "role 'eval'"),
    ],
)
def test_malformed_manifests_name_file_and_problem(tmp_path, text, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_manifest(csv)
    assert "bad.csv" in str(info.value)


def test_validate_task_needs_every_class_in_test(tmp_path):
    rows = _rows()[:3]  # test has no 'nv'
    with pytest.raises(DataError, match="test split has no image of class nv"):
        validate_task(Manifest(name="t", rows=rows))


def test_find_task_by_name_or_path(tmp_path):
    (tmp_path / "pad-ufes-20.csv").write_text("path\nx\n")
    assert find_task(tmp_path, "pad-ufes-20") == tmp_path / "pad-ufes-20.csv"
    with pytest.raises(DataError, match="unknown task 'ham'.*pad-ufes-20"):
        find_task(tmp_path, "ham")
