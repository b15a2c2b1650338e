"""Bad input is refused up front through the CLI: the documented exit code, ONE stderr line naming the
option or path, no traceback, and nothing written."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from test_cli_eval import make_task
from typer.testing import CliRunner

from dermctl.cli.app import app

EMBED = ["embed", "--model", "random", "--backbone", "resnet10t", "--image-size", "32", "--device", "cpu"]
EMBED += ["--workers", "0"]


def run(root: Path, *args: str):
    return CliRunner().invoke(app, ["-C", str(root), *args])


def one_line_error(r, code: int, *needles: str) -> str:
    """Assert exit `code`, a single non-empty stderr line starting `error:` that names every needle."""
    assert r.exit_code == code, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") or lines[0].startswith("Usage") or "Error" in lines[0], lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    make_task(root)
    r = run(root, *EMBED)
    assert r.exit_code == 0, r.output
    return root


@pytest.fixture
def ws_copy(ws: Path, tmp_path: Path) -> Path:
    """A private copy (with its own images) for tests that damage things."""
    root = tmp_path / "ws"
    shutil.copytree(ws, root)
    man = root / "manifests" / "toy.csv"
    man.write_text(man.read_text().replace(str(ws), str(root)))
    return root


def rewrite_manifest(path: Path, change) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    rows = change(rows)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("shots", "needle"),
    [("0", "--shots"), ("a,5", "--shots"), ("-1", "--shots"), ("", "--shots"), ("50", "--shots")],
)
def test_knn_bad_shots(ws: Path, shots: str, needle: str) -> None:
    one_line_error(run(ws, "knn", "--task", "toy", "--shots", shots), 2, needle)
    assert not (ws / "results" / "knn").exists()


@pytest.mark.parametrize("k", ["0", "x", "-3"])
def test_knn_bad_k(ws: Path, k: str) -> None:
    one_line_error(run(ws, "knn", "--task", "toy", "--k", k), 2, "--k")


def test_knn_bad_repeats_and_vote(ws: Path) -> None:
    one_line_error(run(ws, "knn", "--task", "toy", "--repeats", "0"), 2, "--repeats")
    one_line_error(run(ws, "knn", "--task", "toy", "--vote", "loudest"), 2, "--vote", "loudest")


def test_probe_bad_shots(ws: Path) -> None:
    one_line_error(run(ws, "probe", "--task", "toy", "--shots", "0"), 2, "--shots")


def test_unknown_method_backbone_task(ws: Path, tmp_path: Path) -> None:
    man = ws / "manifests" / "toy.csv"
    one_line_error(run(ws, "pretrain", "--method", "nosuch", "--data", str(man)), 2, "--method", "nosuch")
    r = run(ws, "embed", "--model", "random", "--backbone", "resnet_9000", "--device", "cpu")
    one_line_error(r, 2, "--backbone", "resnet_9000")
    # an unknown task is a missing input: the manifest it names does not exist (exit 3)
    one_line_error(run(ws, "knn", "--task", "nosuch"), 3, "nosuch")
    one_line_error(run(ws, "probe", "--task", "nosuch"), 3, "nosuch")
    one_line_error(run(ws, *EMBED, "--task", "nosuch"), 3, "nosuch")
    one_line_error(run(ws, "knn", "--task", "toy", "--model", "nosuch-model"), 3, "nosuch-model")


def test_missing_and_unreadable_paths(ws: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    r = run(tmp_path / "w", "ingest", "--dataset", "folder", "--root", str(missing))
    one_line_error(r, 3, str(missing))
    r = run(tmp_path / "w", "ingest", "--dataset", "nosuchset", "--root", str(tmp_path))
    one_line_error(r, 2, "nosuchset")
    # a --model that is neither a run, a path nor a reference name is missing from the workspace (exit 3)
    one_line_error(run(ws, "embed", "--model", str(missing), "--device", "cpu"), 3, "--model", "nowhere")
    r = run(
        ws, "embed", "--model", "imagenet", "--weights", str(missing / "w.safetensors"), "--device", "cpu"
    )
    one_line_error(r, 3, "w.safetensors")
    r = run(ws, "pretrain", "--method", "simclr", "--data", str(missing / "m.csv"), "--device", "cpu")
    one_line_error(r, 3, "m.csv")
    one_line_error(run(ws, "report", "--results", str(missing)), 3, "nowhere")


# ------------------------------------------------------------------------------------------ manifests


def test_manifest_without_path_column(ws_copy: Path) -> None:
    man = ws_copy / "manifests" / "toy.csv"
    man.write_text("file,label,split\na.png,bcc,train\n")
    one_line_error(run(ws_copy, *EMBED, "--task", "toy", "--force"), 3, "toy.csv", "path")


def test_manifest_bad_split_value(ws_copy: Path) -> None:
    man = ws_copy / "manifests" / "toy.csv"
    rewrite_manifest(
        man, lambda rows: [{**r, "split": "holdout" if i == 0 else r["split"]} for i, r in enumerate(rows)]
    )
    one_line_error(run(ws_copy, *EMBED, "--task", "toy", "--force"), 3, "toy.csv")


FT_RANDOM = ["finetune", "--task", "toy", "--model", "random", "--backbone", "resnet10t", "--device", "cpu"]
FT_RANDOM += ["--image-size", "32", "--epochs", "1", "--workers", "0"]


def _relabel_one_test_image(rows):
    for r in rows:
        if r["split"] == "test" and r["label"] == "bcc":
            r["label"] = "scc"
            break
    return rows


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_relabel_one_test_image, "scc"),  # a label in test that train never has
        (lambda rows: [r for r in rows if not (r["split"] == "test" and r["label"] == "mel")], "mel"),
    ],
    ids=["unknown-test-label", "test-split-without-a-class"],
)
def test_task_with_label_problems_refused_by_finetune(ws_copy: Path, change, needle: str) -> None:
    man = ws_copy / "manifests" / "toy.csv"
    rewrite_manifest(man, change)
    one_line_error(run(ws_copy, *FT_RANDOM), 3, needle)
    assert not (ws_copy / "results").exists()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_relabel_one_test_image, "scc"),
        (lambda rows: [r for r in rows if not (r["split"] == "test" and r["label"] == "mel")], "mel"),
    ],
    ids=["unknown-test-label", "test-split-without-a-class"],
)
def test_task_with_label_problems_refused_by_knn(ws_copy: Path, change, needle: str) -> None:
    rewrite_manifest(ws_copy / "manifests" / "toy.csv", change)
    assert run(ws_copy, *EMBED, "--task", "toy", "--force").exit_code == 0
    # embedding is label-agnostic; the evaluations must refuse the task up front
    one_line_error(run(ws_copy, "knn", "--task", "toy", "--shots", "1", "--repeats", "1"), 3, needle)
    one_line_error(run(ws_copy, "probe", "--task", "toy"), 3, needle)


def test_images_deleted_after_ingest(ws_copy: Path) -> None:
    victim = sorted((ws_copy / "images").glob("*.png"))[3]
    victim.unlink()
    one_line_error(run(ws_copy, *EMBED, "--task", "toy", "--force"), 3, victim.name)
    one_line_error(run(ws_copy, *FT_RANDOM), 3, victim.name)


def test_images_deleted_after_ingest_finetune(ws_copy: Path) -> None:
    victim = sorted((ws_copy / "images").glob("*.png"))[3]
    victim.unlink()
    one_line_error(run(ws_copy, *FT_RANDOM, "--workers", "1"), 3, victim.name)


def test_embeddings_from_a_different_manifest(ws_copy: Path) -> None:
    man = ws_copy / "manifests" / "toy.csv"
    rewrite_manifest(man, lambda rows: rows[:-1])  # the task changed after `embed`
    r = run(ws_copy, "knn", "--task", "toy", "--shots", "1", "--repeats", "1")
    one_line_error(r, 3, "toy")
    assert not (ws_copy / "results" / "knn").exists()


# ------------------------------------------------------------------------------------------ workspace


def test_read_only_workspace_refused_up_front(ws_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores chmod a-w and a bind mount needs privileges: make the OS answer as a read-only
    # file system does (access(2) says EROFS for W_OK) for this workspace only.
    real_access = os.access
    root = str(ws_copy)

    def access(path, mode, *a, **kw):
        if str(path).startswith(root) and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    before = sorted(p.name for p in ws_copy.rglob("*"))
    for args in (
        [*EMBED, "--force"],
        ["knn", "--task", "toy"],
        ["probe", "--task", "toy"],
        ["report"],
        ["ingest", "--dataset", "folder", "--root", str(ws_copy / "images"), "--unlabelled"],
    ):
        one_line_error(run(ws_copy, *args), 3, str(ws_copy))
    fresh = ws_copy / "sub" / "new-ws"
    one_line_error(run(fresh, "knn", "--task", "toy"), 3, str(ws_copy))
    assert sorted(p.name for p in ws_copy.rglob("*")) == before


def test_print_config_needs_no_writable_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m, *a, **k: False if m & os.W_OK else real_access(p, m))
    r = run(tmp_path, "pretrain", "--method", "simclr", "--print-config")
    assert r.exit_code == 0, r.output


def test_global_batch_not_divisible_by_world_size() -> None:
    # Through the CLI this needs torchrun with several processes; the check itself runs before training.
    from dermctl.errors import EXIT_USAGE, UsageError
    from dermctl.runtime.distributed import per_process_batch

    with pytest.raises(UsageError) as info:
        per_process_batch({"batch_size": 4, "global_batch": 6}, 4)
    assert info.value.exit_code == EXIT_USAGE and "global_batch" in info.value.message
    assert "\n" not in info.value.message
    assert per_process_batch({"batch_size": 4, "global_batch": 8}, 4) == 2


# ------------------------------------------------------------------------------------------ safe loading


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "payload ran"))


def _payload_file(path: Path, marker: Path) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": _Payload(marker), "epoch": 0, "state_dict": _Payload(marker)}, path)
    return path


def test_pickle_payloads_refused_and_never_run(ws_copy: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _payload_file(tmp_path / "evil.pt", marker)
    run_dir = ws_copy / "runs" / "finetune-random-resnet10t-toy"  # a fine-tuning checkpoint
    _payload_file(run_dir / "last.pt", marker)
    r = run(ws_copy, *FT_RANDOM, "--resume")
    one_line_error(r, 3, "last.pt")
    r = run(ws_copy, "embed", "--model", "imagenet", "--backbone", "resnet10t", "--weights", str(evil))
    one_line_error(r, 3, "evil.pt")
    r = run(ws_copy, *FT_RANDOM[:4], "imagenet", *FT_RANDOM[5:], "--weights", str(evil), "--force")
    one_line_error(r, 3, "evil.pt")
    corpus = ws_copy / "manifests" / "toy.csv"
    r = run(
        ws_copy,
        "--quiet",
        "pretrain",
        "--batch-size",
        "4",
        "--method",
        "simclr",
        "--data",
        str(corpus),
        "--allow-task-images",
        "--backbone",
        "resnet10t",
        "--device",
        "cpu",
        "--init",
        str(evil),
    )
    one_line_error(r, 3, "evil.pt")
    assert not marker.exists()
