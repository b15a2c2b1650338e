from __future__ import annotations

import json
import os

import pytest

from dermctl.errors import ConflictError, DataError
from dermctl.workspace import Workspace, atomic_path, atomic_write_json, atomic_write_text, read_json


def test_layout_paths(tmp_path):
    ws = Workspace.at(tmp_path)
    assert ws.manifests == tmp_path / "manifests"
    assert ws.embedding_path("dino-x", "ham10000") == tmp_path / "embeddings" / "dino-x" / "ham10000.h5"
    assert ws.result_path("knn", "m", "t") == tmp_path / "results" / "knn" / "m" / "t.json"
    assert not ws.manifests.exists()  # creating the object touches nothing
    ws.ensure()
    for name in ("manifests", "runs", "embeddings", "results", "reports", "cache"):
        assert (tmp_path / name).is_dir()


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("torn")
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_refuses_overwrite_when_asked(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(ConflictError, match="r.json"):
        atomic_write_json(target, {"v": 2}, overwrite=False)
    assert json.loads(target.read_text()) == {"v": 1}


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_json(bad)
