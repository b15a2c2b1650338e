"""dermctl.train.config: TOML files, overrides, validation, the TOML writer."""

from __future__ import annotations

import tomllib

import helpers_methods  # noqa: F401  (registers the tiny test method)
import pytest

from dermctl.errors import DataError, UsageError
from dermctl.methods.base import ENGINE_DEFAULTS
from dermctl.train.config import build_config, load_config_file, resume_differences, to_toml, validate_config


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


def test_toml_round_trip():
    cfg = build_config("tinytest", None, {"weight_decay_end": None, "monitor_task": 'a "quoted" name'})
    text = to_toml(cfg)
    back = tomllib.loads(text)
    assert back == {k: v for k, v in cfg.items() if v is not None}
    assert "# weight_decay_end = (unset)" in text


def test_validate_accepts_defaults_and_resume_differences():
    cfg = build_config("tinytest", None, {})
    validate_config(cfg)
    other = dict(cfg, lr=1.0, num_workers=3)
    assert resume_differences(cfg, other) == ["lr"]  # num_workers does not change the numbers
    assert resume_differences(cfg, dict(cfg)) == []
