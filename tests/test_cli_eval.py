"""End to end through the CLI: embed -> knn -> probe -> stratified, and the one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dermctl.cli.app import app
from dermctl.results import read_result

COLOURS = {"bcc": (200, 40, 40), "mel": (40, 200, 40), "nev": (40, 40, 200)}


def make_task(root: Path, name: str = "toy", per_split=(4, 2, 3)) -> Path:
    rng = np.random.default_rng(0)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    (root / "manifests").mkdir(parents=True, exist_ok=True)
    out = root / "manifests" / f"{name}.csv"
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split", "group", "role", "skin_type"])
        for label, colour in COLOURS.items():
            for split, n in zip(("train", "val", "test"), per_split, strict=True):
                for i in range(n):
                    arr = np.clip(np.array(colour) + rng.normal(0, 25, (30, 34, 3)), 0, 255).astype(np.uint8)
                    path = img_dir / f"{label}_{split}_{i}.png"
                    Image.fromarray(arr).save(path)
                    w.writerow([str(path), label, split, f"{label}{split}{i}", "task", str(1 + i % 3)])
    return out


def run(root: Path, *args: str):
    return CliRunner().invoke(app, ["-C", str(root), *args])


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    make_task(root)
    r = run(
        root,
        "--json",
        "embed",
        "--model",
        "random",
        "--backbone",
        "resnet10t",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--workers",
        "0",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["embeddings"][0]
    assert out["status"] == "written" and out["n"] == 27
    return root


def one_line_error(r, code: int, *needles: str) -> None:
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_embed_reuses(ws: Path) -> None:
    r = run(
        ws,
        "--json",
        "embed",
        "--model",
        "random",
        "--backbone",
        "resnet10t",
        "--image-size",
        "32",
        "--device",
        "cpu",
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["embeddings"][0]["status"] == "reused"


def test_knn_writes_result(ws: Path) -> None:
    r = run(ws, "--json", "knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3")
    assert r.exit_code == 0, r.output
    (summary,) = json.loads(r.stdout)["results"]
    res = read_result(ws / "results/knn/random-resnet10t/toy.json")
    assert summary["path"].endswith("results/knn/random-resnet10t/toy.json")
    assert res["protocol"] == "knn" and res["init"] == "random" and res["backbone"] == "resnet10t"
    assert res["class_names"] == ["bcc", "mel", "nev"] and res["metrics"]["n"] == 9
    assert [p["shots"] for p in res["curve"]] == [1, 2, "all"]
    assert [p["k"] for p in res["curve"]] == [3, 6, 12]  # capped at the support size
    assert res["curve"][0]["repeats"] == 3 and len(res["curve"][0]["values"]) == 3
    assert set(res["per_skin_type"]) == {"1", "2", "3"}
    assert set(res["inputs"]) == {"embeddings", "manifest", "checkpoint"}
    assert res["metrics"]["macro_f1"] > 0.6  # colour-coded classes are easy even for random features
    # the same evaluation again is fine; a different one needs --force
    assert run(ws, "knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3").exit_code == 0
    one_line_error(
        run(ws, "knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3", "--k", "1"), 5, "--force"
    )
    r = run(ws, "knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3", "--k", "1", "--force")
    assert r.exit_code == 0 and "macro-F1" in r.stdout
    assert read_result(ws / "results/knn/random-resnet10t/toy.json")["config"]["k"] == 1


def test_probe_and_stratified(ws: Path) -> None:
    r = run(ws, "--json", "probe", "--task", "toy", "--shots", "2,all", "--repeats", "2")
    assert r.exit_code == 0, r.output
    res = read_result(ws / "results/linear/random-resnet10t/toy.json")
    assert res["protocol"] == "linear" and [p["shots"] for p in res["curve"]] == [2, "all"]
    assert res["config"]["lam"] > 0 and res["metrics"]["auroc_ovr"] is not None
    r = run(ws, "--json", "probe", "--task", "toy", "--model", "stratified")
    assert r.exit_code == 0, r.output
    st = read_result(ws / "results/stratified/stratified/toy.json")
    assert st["init"] == "stratified" and st["protocol"] == "stratified"
    assert abs(st["metrics"]["macro_f1"] - 1 / 3) < 0.1
    assert st["test_split_sha256"] == res["test_split_sha256"]


def test_protocol_paper_is_stored_beside_the_honest_result(ws: Path) -> None:
    r = run(ws, "--json", "knn", "--task", "toy", "--shots", "1,all", "--repeats", "3", "--protocol", "paper")
    assert r.exit_code == 0, r.output
    res = read_result(ws / "results/knn-paper/random-resnet10t/toy.json")
    assert res["protocol"] == "knn-paper" and res["config"]["k_chosen_on"] == "test"
    assert all(p["macro_f1_max"] == max(p["values"]) for p in res["curve"])
    r = run(
        ws, "--json", "probe", "--task", "toy", "--shots", "2,all", "--repeats", "2", "--protocol", "paper"
    )
    assert r.exit_code == 0, r.output
    lin = read_result(ws / "results/linear-paper/random-resnet10t/toy.json")
    assert lin["protocol"] == "linear-paper" and "LogisticRegression()" in lin["config"]["classifier"]
    one_line_error(run(ws, "knn", "--task", "toy", "--protocol", "optimistic"), 2, "--protocol")
    one_line_error(run(ws, "knn", "--task", "toy", "--protocol", "paper", "--k", "5"), 2, "--k")
    one_line_error(
        run(ws, "probe", "--task", "toy", "--model", "stratified", "--protocol", "paper"), 2, "stratified"
    )


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--shots", "0"], 2, ["--shots", "0"]),
        (["--shots", "a,5"], 2, ["--shots", "'a'"]),
        (["--shots", "5"], 2, ["--shots", "'bcc'", "4"]),
        (["--k", "x"], 2, ["--k"]),
        (["--vote", "soft"], 2, ["--vote"]),
    ],
)
def test_knn_option_errors(ws: Path, args: list[str], code: int, needles: list[str]) -> None:
    one_line_error(run(ws, "knn", "--task", "toy", *args), code, *needles)


def test_knn_and_probe_compute_on_the_device_asked_for(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dermctl.eval import knn, probe
    from dermctl.runtime.device import compute_device

    seen: list[str] = []
    for mod, name in ((knn, "knn_fewshot"), (probe, "probe_fewshot")):
        real = getattr(mod, name)

        def spy(*a, _real=real, **kw):  # type: ignore[no-untyped-def]
            seen.append(str(compute_device()))
            return _real(*a, **kw)

        monkeypatch.setattr(f"dermctl.eval.runner.{name}", spy)
    result = ws / "results/knn/random-resnet10t/toy.json"
    if not result.exists():  # the tests of this module may run in any order
        assert run(ws, "knn", "--task", "toy", "--shots", "1,2,all", "--repeats", "3").exit_code == 0
    before = result.read_bytes()
    seen.clear()
    # no GPU here: cuda is refused in one line before anything is read or written
    one_line_error(run(ws, "knn", "--task", "toy", "--device", "cuda"), 6, "--device cuda", "no CUDA GPU")
    one_line_error(run(ws, "probe", "--task", "toy", "--device", "tpu"), 2, "--device", "'tpu'")
    assert result.read_bytes() == before and seen == []
    # a GPU "present" (auto would pick it): --device cpu keeps every rule on the CPU
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    for cmd in ("knn", "probe"):
        r = run(
            ws,
            "--json",
            cmd,
            "--task",
            "toy",
            "--shots",
            "2,all",
            "--repeats",
            "2",
            "--device",
            "cpu",
            "--force",
        )
        assert r.exit_code == 0, r.output
    assert seen == ["cpu", "cpu"]


def test_unknown_task_and_missing_embeddings(ws: Path) -> None:
    one_line_error(run(ws, "knn", "--task", "nope"), 3, "unknown task", "nope")
    one_line_error(run(ws, "probe", "--task", "toy", "--model", "ghost"), 3, "ghost")


def test_embeddings_from_another_manifest(tmp_path: Path) -> None:
    man = make_task(tmp_path)
    assert (
        run(
            tmp_path,
            "embed",
            "--model",
            "random",
            "--backbone",
            "resnet10t",
            "--image-size",
            "32",
            "--device",
            "cpu",
        ).exit_code
        == 0
    )
    rows = man.read_text().splitlines()
    man.write_text("\n".join(rows[:-1]) + "\n")  # drop one test image
    one_line_error(run(tmp_path, "knn", "--task", "toy"), 3, "different version of manifest")
    one_line_error(run(tmp_path, "probe", "--task", "toy"), 3, "different version of manifest")


def test_imagenet_offline_is_noted_for_the_report(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = run(
        ws, "embed", "--model", "imagenet", "--backbone", "resnet10t", "--image-size", "32", "--device", "cpu"
    )
    one_line_error(r, 6, "--model imagenet")
    note = json.loads((ws / "results/unavailable/imagenet-resnet10t.json").read_text())
    assert note["init"] == "imagenet" and note["tasks"] == ["toy"] and "offline" in note["reason"]
    # a result of its own (the module's workspace is shared, and other tests may run on another worker)
    assert run(ws, "probe", "--task", "toy", "--model", "stratified").exit_code == 0
    r = run(ws, "report")  # the note is no result file: the report reads it as a row, not as a result
    assert r.exit_code == 0, r.output
    assert "ImageNet (unavailable)" in (ws / "reports" / "table2.md").read_text()
