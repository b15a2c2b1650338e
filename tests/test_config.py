"""dermctl.train.config: TOML files, overrides, validation, the TOML writer."""

from __future__ import annotations

import tomllib

import helpers_methods  # noqa: F401  (registers the tiny test method)
import pytest

from dermctl.errors import DataError, UsageError
from dermctl.methods.base import ENGINE_DEFAULTS
from dermctl.train.config import (
    build_config,
    load_config_file,
    resume_differences,
    source_comments,
    to_toml,
    validate_config,
)


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('method = "tinytest"\nlr = 0.5\nepochs = 7\n[pretrain]\nbatch_size = 2\n', encoding="utf-8")
    cfg = build_config(None, f, {"lr": 0.25})
    assert cfg["method"] == "tinytest"
    assert cfg["lr"] == 0.25  # --set beats the file
    assert cfg["epochs"] == 7 and cfg["batch_size"] == 2  # file beats the defaults
    assert cfg["image_size"] == 32  # method default kept
    assert set(ENGINE_DEFAULTS) <= set(cfg)


def test_unknown_key_names_it(tmp_path):
    with pytest.raises(UsageError, match="'learning_rate'"):
        build_config("tinytest", None, {"learning_rate": 1.0})
    f = tmp_path / "c.toml"
    f.write_text("bogus_key = 1\n", encoding="utf-8")
    with pytest.raises(UsageError, match="bogus_key"):
        build_config("tinytest", f, {})


def test_unknown_method():
    with pytest.raises(UsageError, match="--method"):
        build_config("nosuchmethod", None, {})
    with pytest.raises(UsageError, match="--method"):
        build_config(None, None, {})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", 2.5),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("optimizer", "lamb"),
        ("precision", "fp8"),
        ("lr_schedule", "step"),
        ("patience", -1),
        ("clip_grad", -1.0),
        ("momentum_teacher", 1.5),
        ("warmup_epochs", -1),
        ("epochs", True),
        ("backbone_kwargs", [4]),
        ("backbone_kwargs", "patch_size=4"),
    ],
)
def test_bad_values_name_key_and_value(key, value):
    with pytest.raises(UsageError) as err:
        build_config("tinytest", None, {key: value})
    assert repr(key) in err.value.message and "expected" in err.value.message


def test_bad_toml_is_data_error(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("lr = = 3\n", encoding="utf-8")
    with pytest.raises(DataError, match="bad.toml"):
        load_config_file(f)
    with pytest.raises(DataError, match="not found"):
        load_config_file(tmp_path / "missing.toml")


def test_backbone_kwargs_owned_by_dermctl_refused():
    with pytest.raises(UsageError, match="in_chans is set by dermctl itself"):
        build_config("tinytest", None, {"backbone_kwargs": {"in_chans": 1, "patch_size": 4}})


def test_toml_round_trip():
    cfg = build_config(
        "tinytest",
        None,
        {"weight_decay_end": None, "monitor_task": 'a "quoted" name', "backbone_kwargs": {"patch_size": 4}},
    )
    text = to_toml(cfg)
    back = tomllib.loads(text)
    assert back == {k: v for k, v in cfg.items() if v is not None}
    assert "# weight_decay_end = (unset)" in text


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_print_config_output_loads_back_as_a_config_file(tmp_path, method):
    """`--print-config > run.toml` then `--config run.toml` (tables such as backbone_kwargs included)."""
    cfg = build_config(method, None, {"backbone_kwargs": {"patch_size": 8}})
    f = tmp_path / "run.toml"
    f.write_text(to_toml(cfg, source_comments(cfg)), encoding="utf-8")
    assert build_config(None, f) == cfg


def test_a_run_saved_before_new_keys_resumes_with_its_old_behaviour():
    """A 0.1.0 run's config has no backbone_kwargs / export_epoch: resuming it keeps what it did (best)."""
    saved = build_config("dino", None, {})
    del saved["backbone_kwargs"], saved["export_epoch"]
    cfg = build_config("dino", None, {}, base=saved)
    assert cfg["export_epoch"] == "best" and cfg["backbone_kwargs"] == {}
    assert resume_differences(saved, cfg) == []
    assert all(
        build_config(m, None, {})["export_epoch"] == "last"
        for m in ("simclr", "byol", "colorme", "dino", "ibot")
    )


def test_validate_accepts_defaults_and_resume_differences():
    cfg = build_config("tinytest", None, {})
    validate_config(cfg)
    other = dict(cfg, lr=1.0, num_workers=3)
    assert resume_differences(cfg, other) == ["lr"]  # num_workers does not change the numbers
    assert resume_differences(cfg, dict(cfg)) == []


# -- every default has a source, shown by --print-config and in docs/methods-*.md ---------------------

STUDY_METHODS = ("colorme", "simclr", "byol", "dino", "ibot")


@pytest.mark.parametrize("method", STUDY_METHODS)
def test_every_default_names_its_source(method):
    from dermctl.methods.registry import get_method

    cls = get_method(method)
    sources = cls.sources()
    missing = [k for k in cls.defaults() if not sources.get(k, "").strip()]
    assert not missing, f"{method}: no source for {missing}"
    # a method's own entries name only keys it really has (no stale sources)
    assert set(cls.default_sources) <= set(cls.defaults())


@pytest.mark.parametrize(
    "method, init, scaling, extra",
    [
        ("colorme", "imagenet", "none", {"sgd_momentum": 0.0, "optimizer": "sgd", "lr_schedule": "none"}),
        ("simclr", "imagenet", "linear256", {"proj_final_bn": True}),
        ("byol", "imagenet", "linear256", {}),
        ("dino", "random", "linear256", {"export": "teacher"}),
        ("ibot", "random", "linear256", {"export": "teacher"}),
    ],
)
def test_study_defaults(method, init, scaling, extra):
    """The study authors' code: ImageNet init for the CNN methods, random for the ViTs; lr x batch / 256
    whenever a schedule is on; ColorMe plain SGD; DINO/iBOT evaluated on the teacher (official)."""
    cfg = build_config(method, None, {})
    assert (cfg["init"], cfg["lr_scaling"]) == (init, scaling)
    for key, value in extra.items():
        assert cfg[key] == value, key


def test_print_config_comments_name_sources_and_overrides():
    from dermctl.train.config import source_comments

    cfg = build_config("simclr", None, {"lr": 1e-3})
    text = to_toml(cfg, source_comments(cfg))
    assert tomllib.loads(text) == {k: v for k, v in cfg.items() if v is not None}  # comments stay comments
    line = {ln.split(" =")[0]: ln for ln in text.splitlines()}
    assert "Gröger et al. Table 1" in line["batch_size"]
    assert "authors' code models/simclr/model.py" in line["init"]
    assert "overridden; default 3e-05" in line["lr"]


def test_docs_defaults_tables_are_current():
    from pathlib import Path

    from dermctl.train.config import render_defaults_docs

    docs = Path(__file__).resolve().parents[1] / "docs"
    seen = set()
    for name in ("methods-cnn.md", "methods-vit.md"):
        text = (docs / name).read_text(encoding="utf-8")
        seen |= {m for m in STUDY_METHODS if f"<!-- defaults:{m} -->" in text}
        assert render_defaults_docs(text) == text, (
            f"docs/{name} is stale: python -m dermctl.train.config docs/methods-cnn.md docs/methods-vit.md"
        )
    assert seen == set(STUDY_METHODS)
