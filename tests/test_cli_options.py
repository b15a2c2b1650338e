"""dermctl.cli.options: the options several commands share have one spelling, one help text, one rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers_methods import make_corpus, make_images
from typer.testing import CliRunner

from dermctl.cli.app import app

runner = CliRunner()
DEVICE_COMMANDS = ("pretrain", "finetune", "embed", "knn", "probe", "demo")
WORKER_COMMANDS = ("pretrain", "finetune", "embed", "demo")


def _help(command: str) -> str:
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    return r.output


def _option_line(text: str, option: str) -> str:
    lines = [ln for ln in text.splitlines() if re.search(rf"{option}\b", ln)]
    assert lines, f"{option} not in help"
    return re.sub(r"[│\s]+", " ", lines[0]).strip()


def test_device_and_workers_read_the_same_in_every_command() -> None:
    device = {c: _option_line(_help(c), "--device") for c in DEVICE_COMMANDS}
    assert len(set(device.values())) == 1, device
    assert "cuda:N" in next(iter(device.values()))
    for c in WORKER_COMMANDS:
        text = _help(c)
        assert "--workers" in text and "--num-workers" not in text, c  # the old spelling is hidden


def _print_config(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    corpus = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 4))
    args = ["-C", str(tmp_path / "ws"), "--json", "pretrain", "--method", "simclr", "--data", str(corpus)]
    return runner.invoke(app, [*args, "--print-config", *extra])


def test_old_num_workers_spelling_still_works_with_a_note(tmp_path: Path) -> None:
    r = _print_config(tmp_path, "--num-workers", "0")
    assert r.exit_code == 0, r.output
    assert "now spelled --workers" in r.stderr
    assert json.loads(r.stdout)["num_workers"] == 0
    r = _print_config(tmp_path, "--workers", "3")
    assert r.exit_code == 0 and json.loads(r.stdout)["num_workers"] == 3


def test_both_spellings_at_once_is_a_usage_error(tmp_path: Path) -> None:
    r = _print_config(tmp_path, "--workers", "1", "--num-workers", "0")
    assert r.exit_code == 2
    assert "--workers and --num-workers" in r.stderr
