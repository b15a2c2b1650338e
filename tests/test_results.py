"""Result files: schema validation, atomic write, no silent overwrite of a different result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dermctl.errors import ConflictError, DataError
from dermctl.eval.metrics import classification_report
from dermctl.results import SCHEMA, build_result, read_result, test_split_hash, write_result


def payload(f1_shift: int = 0) -> dict:
    report = classification_report([0, 1, 1, 0], [0, 1, f1_shift, 0], 2, class_names=["a", "b"], bootstrap=20)
    curve = [
        {
            "shots": 1,
            "repeats": 2,
            "macro_f1_mean": 0.5,
            "macro_f1_std": 0.1,
            "macro_f1_ci": [0.4, 0.6],
            "values": [0.4, 0.6],
            "k": 2,
        }
    ]
    return build_result(
        "knn",
        "dino-run",
        "dino",
        "vit_tiny_patch16_224",
        "ham10000",
        ["a", "b"],
        ["h2", "h1"],
        report,
        {"k": 20},
        {"embeddings": "e", "manifest": "m", "checkpoint": "c"},
        curve,
        {"1": report},
    )


def test_split_hash_ignores_order() -> None:
    assert test_split_hash(["b", "a", "c"]) == test_split_hash(["c", "b", "a"])
    assert test_split_hash(["a", "b"]) != test_split_hash(["a", "b", "c"])


def test_round_trip_and_schema(tmp_path: Path) -> None:
    p = write_result(tmp_path / "results/knn/dino-run/ham10000.json", payload(1))
    r = read_result(p)
    assert r["schema"] == SCHEMA and r["protocol"] == "knn" and r["model"] == "dino-run"
    assert r["test_split_sha256"] == test_split_hash(["h1", "h2"])
    assert r["metrics"]["macro_f1"] == 1.0
    assert "versions" in r["provenance"] and r["per_skin_type"]["1"]["n"] == 4
    assert not list(p.parent.glob("*.tmp"))


def test_refuses_to_overwrite_a_different_result(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    write_result(p, payload(1))
    write_result(p, payload(1))  # the same result again (new provenance time): fine
    with pytest.raises(ConflictError, match="--force"):
        write_result(p, payload(0))
    assert read_result(p)["metrics"]["macro_f1"] == 1.0
    write_result(p, payload(0), force=True)
    assert read_result(p)["metrics"]["macro_f1"] < 1.0


def test_a_result_from_an_older_dermctl_is_the_same_result(tmp_path: Path) -> None:
    """Re-running an unchanged evaluation over a file written before predictions/recall/confusion existed
    is no conflict (the file gains the new fields); a changed number still is."""
    import json

    p = tmp_path / "r.json"
    old = payload(1)
    for rep in (old["metrics"], *old["per_skin_type"].values()):
        rep.pop("per_class_recall", None), rep.pop("confusion", None)
    p.write_text(json.dumps(old))
    write_result(p, payload(1))
    assert "confusion" in read_result(p)["metrics"]
    p.write_text(json.dumps(old))
    with pytest.raises(ConflictError, match="--force"):
        write_result(p, payload(0))


def test_invalid_results_are_rejected(tmp_path: Path) -> None:
    bad = payload(1)
    del bad["metrics"]["macro_f1_ci"]
    with pytest.raises(DataError, match="macro_f1_ci"):
        write_result(tmp_path / "x.json", bad)
    bad = payload(1)
    bad["protocol"] = "svm"
    with pytest.raises(DataError, match="protocol"):
        write_result(tmp_path / "x.json", bad)
    bad = payload(1)
    bad["curve"][0]["shots"] = 0
    with pytest.raises(DataError, match="shots"):
        write_result(tmp_path / "x.json", bad)
    (tmp_path / "y.json").write_text(json.dumps({"schema": "other"}))
    with pytest.raises(DataError, match="schema"):
        read_result(tmp_path / "y.json")
