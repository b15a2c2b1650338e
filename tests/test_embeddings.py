"""The HDF5 embeddings format: round trip, validation, model discovery."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from dermctl.errors import DataError
from dermctl.eval.embeddings import (
    EmbeddingWriter,
    models_with_embeddings,
    read_attrs,
    read_embeddings,
    write_embeddings,
)
from dermctl.provenance import sha256_file
from dermctl.workspace import Workspace

ATTRS = {
    "model_id": "m",
    "init": "dino",
    "backbone": "resnet10t",
    "checkpoint_sha256": "c",
    "manifest_sha256": "s",
    "class_names": ["akiec", "bcc"],
    "feature_rule": "avgpool",
    "image_size": 32,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "channels": "rgb",
}


def test_round_trip(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    p = write_embeddings(
        tmp_path / "e.h5",
        x,
        [0, 1, -1, 0, 1],
        ["train", "train", "val", "test", "test"],
        ATTRS,
        paths=[f"img{i}.jpg" for i in range(5)],
        groups=["p1", "p1", "p2", "p3", "p3"],
        sha256=list("abcde"),
        image_id=["", "", "", "ISIC_1", "ISIC_2"],
        extras={"skin_type": ["1", "2", "3", "-1", "6"]},
    )
    e = read_embeddings(p)
    assert np.array_equal(e.features, x) and e.features.dtype == np.float32
    assert e.labels.tolist() == [0, 1, -1, 0, 1] and e.labels.dtype == np.int64
    assert e.split.tolist() == ["train", "train", "val", "test", "test"]
    assert e.paths[3] == "img3.jpg" and e.image_id[4] == "ISIC_2" and e.sha256.tolist() == list("abcde")
    assert e.extras["skin_type"].tolist() == ["1", "2", "3", "-1", "6"]
    assert e.class_names == ["akiec", "bcc"] and e.attrs["complete"] is True and e.attrs["mean"] == [0.5] * 3
    xv, yv = e.take("val")
    assert yv.size == 0  # unlabelled rows are not evaluation data
    with h5py.File(p) as f:  # plain h5py can read it: strings are utf-8, labels int64
        assert f["features"].shape == (5, 7) and f["split"].asstr()[0] == "train"


def test_streamed_writer_and_incomplete_file(tmp_path: Path) -> None:
    w = EmbeddingWriter(tmp_path / "a.h5", 4, [0, 1, 0, 1], ["train"] * 2 + ["test"] * 2, ATTRS)
    w.write(np.ones((3, 2)))
    w.abort()
    with pytest.raises(DataError, match="incomplete"):
        read_embeddings(tmp_path / "a.h5")
    w = EmbeddingWriter(tmp_path / "b.h5", 4, [0, 1, 0, 1], ["train"] * 2 + ["test"] * 2, ATTRS)
    w.write(np.ones((3, 2)))
    w.write(np.zeros((1, 2)))
    w.close({"dim": 2})
    e = read_embeddings(tmp_path / "b.h5")
    assert e.features.sum() == 6 and read_attrs(tmp_path / "b.h5")["dim"] == 2


def test_validation_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_embeddings(tmp_path / "none.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="junk.h5"):
        read_embeddings(tmp_path / "junk.h5")
    with pytest.raises(DataError, match="labels must lie"):
        write_embeddings(tmp_path / "c.h5", np.ones((2, 2)), [0, 5], ["train", "test"], ATTRS)
        read_embeddings(tmp_path / "c.h5")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["features"] = np.ones((2, 2), dtype=np.float32)
    with pytest.raises(DataError, match="lacks dataset"):
        read_embeddings(tmp_path / "d.h5")


def test_models_with_embeddings(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    assert models_with_embeddings(ws, "t") == []
    for m in ("b", "a"):
        write_embeddings(ws.embedding_path(m, "t"), np.ones((2, 2)), [0, 1], ["train", "test"], ATTRS)
    write_embeddings(ws.embedding_path("c", "other"), np.ones((2, 2)), [0, 1], ["train", "test"], ATTRS)
    assert models_with_embeddings(ws, "t") == ["a", "b"]


def test_seal_detects_damage_before_hdf5_parses_and_user_files_need_none(tmp_path):
    from dermctl.eval.embeddings import read_embeddings, seal_path, write_embeddings

    path = tmp_path / "e.h5"
    write_embeddings(
        path, np.ones((4, 3)), [0, 1, 0, 1], ["train", "train", "test", "test"], {"class_names": ["a", "b"]}
    )
    assert seal_path(path).read_text().split() == [sha256_file(path)]
    assert read_embeddings(path).features.shape == (4, 3)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match e.h5.sha256"):
        read_embeddings(path)
    seal_path(path).unlink()  # a file brought by a user carries no seal: read as it is
    write_embeddings(
        path, np.ones((4, 3)), [0, 1, 0, 1], ["train", "train", "test", "test"], {"class_names": ["a", "b"]}
    )
    seal_path(path).unlink()
    assert read_embeddings(path).n_classes == 2
