"""dermctl in a shell: fast help and TAB (no heavy imports), help as written, unwrapped output when piped,
one-line usage errors with a hint for misplaced global options, and the README's exit-code table."""

from __future__ import annotations

import errno
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import helpers_methods  # noqa: F401  (registers the tiny test method used for exit 4)
import pytest
from helpers_methods import make_corpus, make_images, make_task
from typer.testing import CliRunner

from dermctl import errors
from dermctl.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("ingest", "pretrain", "embed", "knn", "probe", "finetune", "report", "demo")
runner = CliRunner()

# ------------------------------------------------------------------------------- help and TAB stay light

HEAVY = ("torch", "torchvision", "timm", "sklearn", "h5py", "faiss", "numba", "matplotlib")
# Run in a fresh interpreter, as `dermctl ...` is: import the app, answer each request, and name the first
# request after which a heavy library is loaded.
PROBE = """
import json, os, sys
from dermctl.cli import completion
from dermctl.cli.app import app
completion.init()
cases, heavy, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
found = {"import": [m for m in heavy if m in sys.modules]}
for argv, env in cases:
    os.environ.update(env)
    try:
        app(args=argv, prog_name="dermctl")
    except SystemExit:
        pass
    for key in env:
        del os.environ[key]
    found[" ".join(argv) or env.get("COMP_WORDS") or env.get("_TYPER_COMPLETE_ARGS")] = [
        m for m in heavy if m in sys.modules
    ]
open(out, "w").write(json.dumps(found))
"""


def test_help_and_completion_import_no_heavy_library(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "skin.csv").write_text("path,label,role\na.jpg,mel,task\n")
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "backbone.json").write_text("{}")
    bash = {"_DERMCTL_COMPLETE": "complete_bash"}
    cases = [([], {}), (["--help"], {})]
    cases += [([cmd, "--help"], {}) for cmd in COMMANDS]
    cases += [([], {**bash, "COMP_WORDS": "dermctl k", "COMP_CWORD": "1"})]
    cases += [([], {**bash, "COMP_WORDS": "dermctl pretrain --method ", "COMP_CWORD": "3"})]
    cases += [([], {**bash, "COMP_WORDS": f"dermctl -C {tmp_path} knn --task ", "COMP_CWORD": "5"})]
    cases += [([], {**bash, "COMP_WORDS": f"dermctl -C {tmp_path} embed --model ", "COMP_CWORD": "5"})]
    fish = {"_DERMCTL_COMPLETE": "complete_fish", "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
    cases += [([], {**fish, "_TYPER_COMPLETE_ARGS": "dermctl ingest --dataset "})]
    cases += [([], {"_DERMCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "dermctl finetune --"})]
    out = tmp_path / "loaded.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases), json.dumps(HEAVY), str(out)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    loaded = json.loads(out.read_text())
    assert len(loaded) == len(cases) + 1
    first = next(((request, mods) for request, mods in loaded.items() if mods), None)
    assert first is None, f"loaded by {first[0]!r}: {first[1]}"


# ------------------------------------------------------------------------------- help as written


def _help(*args: str) -> list[str]:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def _option_line(lines: list[str], option: str) -> str:
    """The row of `option` in the options panel (its lines start with a box border)."""
    rows = [line for line in lines if line.startswith("│")]
    return next(line for line in rows if re.search(rf"│\s*\*?\s*{re.escape(option)}(\s|,)", line))


@pytest.mark.parametrize("command", [(), *((c,) for c in COMMANDS)])
def test_help_shows_flags_as_flags_and_no_python_types(command: tuple[str, ...]) -> None:
    lines = _help(*command)
    text = "\n".join(lines)
    assert "<bool>" not in text and "list[" not in text
    for line in lines:
        assert not re.search(r"\s\.(\s|$)", line), line  # a `[default: …]` eaten as markup left " ."


def test_help_renders_written_defaults_and_flags() -> None:
    finetune = _help("finetune")
    assert "Input size in pixels [default: the backbone's, 224]." in _option_line(finetune, "--image-size")
    assert re.search(r"--force\s+Restart", _option_line(finetune, "--force"))  # no type between
    report = _help("report")
    assert "[default: <workdir>/results]" in _option_line(report, "--results")
    assert "[default: md,csv,tex,png,svg,html]" in _option_line(report, "--format")
    knn = _help("knn")
    assert re.search(r"--model\s+-m\s+<str>\s", _option_line(knn, "--model"))  # not <list[str]>
    assert re.search(r"--json\s+Machine-readable", _option_line(_help(), "--json"))


def test_help_marks_required_options() -> None:
    pretrain = _help("pretrain")
    for option in ("--method", "--data"):
        line = _option_line(pretrain, option)
        assert "[required]" in line and line.lstrip("│ ").startswith("*"), line
    assert "[required]" not in _option_line(pretrain, "--name")
    assert "[required]" in _option_line(_help("knn"), "--task")  # click's own required options too
    # marked in help only: --print-config still works without --data
    r = runner.invoke(app, ["pretrain", "--method", "simclr", "--print-config"])
    assert r.exit_code == 0 and "method" in r.stdout


# ------------------------------------------------------------------------------- output not on a terminal


def test_console_wraps_only_on_a_terminal() -> None:
    from dermctl.cli.common import UNWRAPPED_WIDTH, _Console

    path = "/data/" + "/".join(f"folder-{i:02d}-with-a-long-name" for i in range(12)) + "/table2.md"
    piped = io.StringIO()
    _Console(file=piped, width=None).print(f"wrote {path}", highlight=False)
    assert piped.getvalue() == f"wrote {path}\n"
    assert _Console(file=io.StringIO()).width == UNWRAPPED_WIDTH
    tty = io.StringIO()
    _Console(file=tty, force_terminal=True, width=40).print(f"wrote {path}", highlight=False)
    assert len(tty.getvalue().splitlines()) > 1  # a terminal still gets lines that fit it


def test_piped_stderr_gets_no_progress_residue(tmp_path: Path) -> None:
    """A progress bar on a pipe drew nothing but left an empty line before the error."""
    result = runner.invoke(app, ["-C", str(tmp_path), "knn", "--task", "nosuch"])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, repr(result.stderr)


# ------------------------------------------------------------------------------- a misplaced global option


@pytest.mark.parametrize(
    ("args", "fixed"),
    [
        (["knn", "-C", "my ws", "--task", "t"], ["-C", "my ws", "knn", "--task", "t"]),
        (["knn", "--task", "t", "--workdir=ws"], ["--workdir=ws", "knn", "--task", "t"]),
        (["embed", "--model", "random", "--json"], ["--json", "embed", "--model", "random"]),
        (["report", "-q"], ["-q", "report"]),
    ],
)
def test_misplaced_global_option_gets_a_hint(args: list[str], fixed: list[str]) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: No such option: {fixed[0].split('=')[0]}")
    assert f"global options go before the command: {shlex.join(['dermctl', *fixed])}" in lines[0]
    assert "Possible options" not in lines[0]


def test_usage_errors_are_one_line() -> None:
    for args in (["knn"], ["knn", "--task", "t", "--repeats", "many"], ["nosuch"], ["knn", "--task"]):
        result = runner.invoke(app, args, env={"COLUMNS": "80"})
        assert result.exit_code == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "(see 'dermctl knn -h')" in runner.invoke(app, ["knn"]).stderr


# ------------------------------------------------------------------------------- one exit code per kind


def _readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$", section, flags=re.M)
    return {int(code): meaning for code, meaning in rows}


def _ws(tmp_path: Path) -> Path:
    (tmp_path / "ws" / "manifests").mkdir(parents=True, exist_ok=True)
    return tmp_path / "ws"


def _cli(ws: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["-C", str(ws), *args])


def _corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 10))


def _internal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("dermctl.data.ingest.run_ingest", bug)
    return _cli(_ws(tmp_path), "ingest", "--dataset", "folder", "--root", str(tmp_path))


def _interrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    def ctrl_c(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("dermctl.data.ingest.run_ingest", ctrl_c)
    return _cli(_ws(tmp_path), "ingest", "--dataset", "folder", "--root", str(tmp_path))


def _conflict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    make_images(tmp_path / "flat", 10, size=40)
    args = ["ingest", "--dataset", "folder", "--root", str(tmp_path / "flat"), "--workers", "1"]
    assert _cli(_ws(tmp_path), *args).exit_code == 0
    return _cli(_ws(tmp_path), *args, "--val-fraction", "0.5")  # would replace a different manifest


def _disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    make_images(tmp_path / "flat", 6, size=40)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dermctl.workspace.os.fsync", full)
    return _cli(_ws(tmp_path), "ingest", "--dataset", "folder", "--root", str(tmp_path / "flat"))


def _training_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    args = ["pretrain", "--method", "tinytest", "--data", str(_corpus(tmp_path)), "--device", "cpu"]
    return _cli(_ws(tmp_path), *args, "--epochs", "1", "--batch-size", "3", "--set", "nan_at_it=1")


def _unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    args = ["pretrain", "--method", "simclr", "--data", str(_corpus(tmp_path)), "--backbone", "resnet10t"]
    return _cli(_ws(tmp_path), *args, "--device", "cpu")


# One representative error per documented code, through the CLI.
TRIGGERS: dict[int, Callable[[Path, pytest.MonkeyPatch], object]] = {
    errors.EXIT_OK: lambda tmp_path, mp: _cli(_ws(tmp_path), "--version"),
    errors.EXIT_INTERNAL: _internal,
    errors.EXIT_USAGE: lambda tmp_path, mp: _cli(_ws(tmp_path), "knn", "--task", "t", "--k", "0"),
    errors.EXIT_DATA: lambda tmp_path, mp: _cli(_ws(tmp_path), "knn", "--task", "nosuch"),
    errors.EXIT_TRAINING: _training_stopped,
    errors.EXIT_CONFLICT: _conflict,
    errors.EXIT_UNAVAILABLE: _unavailable,
    errors.EXIT_INTERRUPTED: _interrupted,
}
if hasattr(errors, "EXIT_DISK_FULL"):
    TRIGGERS[errors.EXIT_DISK_FULL] = _disk_full


def test_readme_table_lists_every_exit_code() -> None:
    defined = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert set(_readme_exit_codes()) == defined


@pytest.mark.parametrize("code", sorted(_readme_exit_codes()))
def test_each_documented_exit_code(code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert code in TRIGGERS, f"README documents exit {code}: add a representative error to TRIGGERS"
    result = TRIGGERS[code](tmp_path, monkeypatch)
    assert result.exit_code == code, result.output  # type: ignore[attr-defined]
    if code not in (errors.EXIT_OK, errors.EXIT_INTERRUPTED):
        stderr = result.stderr  # type: ignore[attr-defined]
        lines = [line for line in stderr.splitlines() if re.match(r"(internal )?error: ", line)]
        assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
        assert "Traceback" not in result.output  # type: ignore[attr-defined]


@pytest.fixture
def task_ws(tmp_path: Path) -> Path:
    ws = _ws(tmp_path)
    make_task(ws / "manifests" / "t.csv", make_images(tmp_path / "t", 8))
    return ws


@pytest.mark.parametrize(
    "command",
    [["knn"], ["probe"], ["embed", "--device", "cpu"], ["finetune", "--device", "cpu"]],
)
def test_unknown_model_is_one_exit_code_everywhere(command: list[str], task_ws: Path) -> None:
    """An unknown --model names something absent from the workspace, like an unknown task or a missing
    path: bad input data, exit 3 (exit 2 is for values wrong in themselves: --k 0, an unknown method)."""
    result = _cli(task_ws, *command, "--task", "t", "--model", "nosuch")
    assert result.exit_code == errors.EXIT_DATA, result.output
    assert "nosuch" in result.stderr


def test_a_full_disk_outside_dermctls_writers_is_exit_7(capsys):
    """ENOSPC raised by a library (not through dermctl's atomic writes) is still one line and exit 7."""
    import errno

    import typer

    from dermctl.cli.common import handle_errors

    @handle_errors
    def command() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/scratch/lib.tmp")

    with pytest.raises(typer.Exit) as ex:
        command()
    assert ex.value.exit_code == 7
    err = capsys.readouterr().err
    assert "/scratch/lib.tmp" in err and "no space left" in err and "internal error" not in err
