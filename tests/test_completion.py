from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dermctl.cli import choices
from dermctl.cli.app import app
from dermctl.cli.completion import SHELLS, init, script

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_committed_completion_scripts_are_current(shell):
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == script(shell), (
        f"regenerate with: python -m dermctl.cli.completion completions/ ({shell})"
    )


def test_dynamic_completion_lists_commands_and_options():
    env = dict(os.environ, _DERMCTL_COMPLETE="complete_bash", COMP_WORDS="dermctl k", COMP_CWORD="1")
    out = subprocess.run(
        [sys.executable, "-m", "dermctl"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["knn"]
    env.update(COMP_WORDS="dermctl --w", COMP_CWORD="1")
    out = subprocess.run(
        [sys.executable, "-m", "dermctl"], env=env, capture_output=True, text=True, check=True
    )
    assert "--workdir" in out.stdout.split()


# ------------------------------------------------------------------------------- the static name lists


def test_static_names_equal_the_registries():
    """choices.py copies the registries so that a TAB never imports torch; the copies must not drift."""
    from dermctl.data.adapters import adapter_names
    from dermctl.demo import TINY_OVERRIDES
    from dermctl.methods import get_method, method_names
    from dermctl.report import FORMATS

    # only dermctl's own methods: a test module may have registered a test-only one
    own = [m for m in method_names() if get_method(m).__module__.startswith("dermctl.")]
    assert sorted(choices.METHODS) == sorted(own)
    assert sorted(choices.DATASETS) == sorted(adapter_names())
    assert sorted(choices.DEMO_METHODS) == sorted(TINY_OVERRIDES)
    assert tuple(choices.REPORT_FORMATS) == tuple(FORMATS)


# ------------------------------------------------------------------------------- values from the workspace


def _complete(shell: str, line: str, **env: str) -> str:
    """What `dermctl` prints for a TAB at the end of `line` in `shell` (in-process, as the scripts ask)."""
    init()
    if shell == "bash":
        words = shlex.split(line)
        cword = len(words) if line.endswith(" ") else len(words) - 1
        env.update(_DERMCTL_COMPLETE="complete_bash", COMP_WORDS=line, COMP_CWORD=str(cword))
    else:
        env.update(_DERMCTL_COMPLETE=f"complete_{shell}", _TYPER_COMPLETE_ARGS=line)
        env.update(_TYPER_COMPLETE_FISH_ACTION="get-args")
    result = runner.invoke(app, [], env={"COLUMNS": "80", **env}, prog_name="dermctl")
    assert result.exit_code == 0, result.output
    return result.stdout


def _bash(line: str, **env: str) -> list[str]:
    return _complete("bash", line, **env).split()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "manifests").mkdir(parents=True)
    header = "path,label,split,group,role\n"
    (root / "manifests" / "skin.csv").write_text(header + "a.jpg,mel,train,,task\n")
    (root / "manifests" / "derm-corpus.csv").write_text(header + "b.jpg,,train,,corpus\n")
    (root / "manifests" / "own.csv").write_text("path\nc.jpg\n")  # hand-made: no role column
    (root / "manifests" / "skin.report.json").write_text("{}")
    (root / "manifests" / ".hashcache.json").write_text("{}")
    for run in ("dino-vit", "simclr-r50"):
        (root / "runs" / run).mkdir(parents=True)
        (root / "runs" / run / "backbone.json").write_text("{}")
    (root / "runs" / "still-training").mkdir()
    (root / "embeddings" / "dino-vit").mkdir(parents=True)
    (root / "embeddings" / "dino-vit" / "skin.h5").write_bytes(b"")
    (root / "embeddings" / "nothing-yet").mkdir()
    return root


def test_methods_and_datasets_are_offered():
    assert _bash("dermctl pretrain --method ") == sorted(choices.METHODS)
    assert _bash("dermctl pretrain -m d") == ["dino"]
    assert _bash("dermctl demo --method ") == ["dino", "simclr"]
    assert _bash("dermctl ingest --dataset p") == ["pad-ufes-20", "ph2"]
    assert _bash("dermctl ingest -d is") == ["isic-archive"]


def test_tasks_models_and_runs_come_from_the_workspace(ws: Path):
    c = f"dermctl -C {ws}"
    assert _bash(f"{c} knn --task ") == ["own", "skin"]  # tasks, not the corpus
    assert _bash(f"{c} pretrain --monitor-task s") == ["skin"]
    assert _bash(f"{c} ingest --exclude ") == ["derm-corpus", "own", "skin"]
    assert _bash(f"{c} embed --model ") == ["dino-vit", "simclr-r50", "imagenet", "random"]
    assert _bash(f"{c} finetune --task skin --model s") == ["simclr-r50"]
    assert _bash(f"{c} knn --model ") == ["dino-vit"]  # models with embeddings
    assert _bash(f"{c} probe --model ") == ["dino-vit", "stratified"]
    assert _bash(f"{c} pretrain --name ") == ["dino-vit", "simclr-r50", "still-training"]
    assert _bash(f"{c} report --format md,") == ["md,csv", "md,tex", "md,png", "md,svg", "md,html"]
    assert _bash(f"{c} report --tasks own,s") == ["own,skin"]
    # the workspace from the environment, as the commands read it
    assert _bash("dermctl knn --task ", DERMCTL_WORKDIR=str(ws)) == ["own", "skin"]


def test_an_empty_or_missing_workspace_offers_nothing(tmp_path: Path):
    assert _bash(f"dermctl -C {tmp_path / 'none'} knn --task ") == []
    assert _bash(f"dermctl -C {tmp_path} embed --model ") == ["imagenet", "random"]


# ------------------------------------------------------------------------------- one candidate per line


def test_fish_prints_one_line_per_candidate():
    """Typer wrapped long descriptions at 80 columns, and fish took each fragment for a candidate."""
    commands = {"ingest", "pretrain", "embed", "knn", "probe", "finetune", "report", "demo"}
    lines = _complete("fish", "dermctl ").splitlines()
    assert {line.split("\t")[0] for line in lines} == commands
    assert all("\t" in line for line in lines)
    for line in _complete("fish", "dermctl ingest --").splitlines():
        assert line.startswith("-"), line
    assert _complete("fish", "dermctl pretrain --method ").split() == sorted(choices.METHODS)


def test_zsh_prints_one_line_per_candidate():
    out = _complete("zsh", "dermctl ").strip()
    assert out.startswith("_arguments '*: :((") and out.endswith("))'")
    lines = out[len("_arguments '*: :((") : -len("))'")].splitlines()
    assert len(lines) == 8
    for line in lines:
        assert line.startswith('"') and line.endswith('"') and '":"' in line, line
    assert '"report":"Collect results into the paper' in out
