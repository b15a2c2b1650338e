"""The resolved pretraining config: method defaults, a TOML file, command-line overrides, validation.

Precedence (lowest first): the method's defaults (`PretrainMethod.defaults()`, the paper's recipe), the
`--config FILE` (TOML; top-level keys or a `[pretrain]` table), `--set key=value`, then dedicated flags
(`--epochs`, `--lr`, ...). Unknown keys and bad values are refused up front, before any data is read.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from dermctl.errors import DataError, UsageError
from dermctl.methods.registry import get_method, resolve_config
from dermctl.train.clipping import CLIP_MODES

OPTIMIZERS = ("sgd", "adam", "adamw")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
LR_SCHEDULES = ("none", "cosine")
LR_SCALINGS = ("none", "linear256")

# Keys that may differ between a run and its --resume without changing the numbers it produces.
# Keys whose value is a table (`backbone_kwargs = {patch_size = 8}` in a config file).
TABLE_KEYS = frozenset({"backbone_kwargs"})
# Keys added after 0.1.0, with the behaviour a run saved without them had: a resumed old run keeps it.
LEGACY_DEFAULTS: dict[str, Any] = {"backbone_kwargs": {}, "export_epoch": "best"}
RESUME_FREE_KEYS = frozenset({"num_workers", "monitor_task", "monitor_every", "deterministic"})


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Flat key/value config from a TOML file (top-level keys, or the `[pretrain]` table)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"--config: {p} not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--config: cannot read {p}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"--config: {p} is not valid TOML ({exc})") from exc
    if "pretrain" in data:
        table = data.pop("pretrain")
        if not isinstance(table, dict):
            raise DataError(f"--config: {p}: 'pretrain' must be a table")
        for key, value in table.items():
            data.setdefault(key, value)
    nested = [k for k, v in data.items() if isinstance(v, dict) and k not in TABLE_KEYS]
    if nested:
        raise DataError(
            f"--config: {p}: unexpected table [{nested[0]}] (expected flat keys or a [pretrain] table)"
        )
    return data


def build_config(
    method: str | None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Resolve and validate a full config.

    `base` (a saved run's config, for --resume) replaces the method defaults as the starting point.
    `method` may be None when the config file names it (`method = "simclr"`).
    """
    layered: dict[str, Any] = {}
    if config_file is not None:
        layered.update(load_config_file(config_file))
    file_method = layered.pop("method", None)
    layered.update(overrides or {})
    layered.pop("method", None)
    name = method or file_method or (base or {}).get("method")
    if not name:
        raise UsageError("--method: missing (give --method NAME or `method = ...` in --config)")
    if base:  # a saved run: keys it predates take the behaviour it ran with, not today's defaults
        base = {**LEGACY_DEFAULTS, **base}
    cfg = resolve_config(str(name), {**_without_method(base), **layered} if base else layered)
    validate_config(cfg)
    return cfg


def _without_method(cfg: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (cfg or {}).items() if k != "method"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


EXPORT_EPOCHS = ("best", "last")
# timm.create_model arguments dermctl sets from its own keys (create_backbone): not for backbone_kwargs.
BACKBONE_OWNED_KWARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "num_classes", "in_chans", "drop_path_rate"}
)


def validate_config(cfg: dict[str, Any]) -> None:
    """Refuse impossible values with one line naming the key, the value and what was expected."""

    def bad(key: str, expected: str) -> UsageError:
        return UsageError(f"config key {key!r} = {cfg.get(key)!r}: expected {expected}")

    def need_int(key: str, low: int) -> None:
        if not _is_int(cfg.get(key)) or cfg[key] < low:
            raise bad(key, f"an integer >= {low}")

    def need_num(key: str, low: float, *, strict: bool = False, high: float | None = None) -> None:
        v = cfg.get(key)
        ok = _is_num(v) and (v > low if strict else v >= low) and (high is None or v <= high)
        if not ok:
            rng = f"> {low}" if strict else f">= {low}"
            raise bad(key, f"a number {rng}" + (f" and <= {high}" if high is not None else ""))

    def need_choice(key: str, choices: tuple[str, ...]) -> None:
        if cfg.get(key) not in choices:
            raise bad(key, f"one of {', '.join(choices)}")

    need_int("epochs", 1)
    need_int("batch_size", 1)
    need_num("lr", 0.0, strict=True)
    need_num("min_lr", 0.0)
    need_num("warmup_epochs", 0.0)  # may exceed epochs: the schedule then warms up throughout
    need_num("weight_decay", 0.0)
    if cfg.get("weight_decay_end") is not None:
        need_num("weight_decay_end", 0.0)
    need_num("sgd_momentum", 0.0, high=1.0)
    need_num("clip_grad", 0.0)
    need_num("momentum_teacher", 0.0, high=1.0)
    need_int("image_size", 8)
    need_int("patience", 0)
    need_num("min_delta", 0.0)
    need_int("val_every", 1)
    need_int("num_workers", -1)
    need_int("seed", 0)
    need_int("monitor_every", 1)
    need_choice("optimizer", OPTIMIZERS)
    need_choice("precision", PRECISIONS)
    need_choice("lr_schedule", LR_SCHEDULES)
    need_choice("lr_scaling", LR_SCALINGS)
    need_choice("clip_mode", CLIP_MODES)
    need_choice("export_epoch", EXPORT_EPOCHS)
    for key in ("backbone", "init"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise bad(key, "a non-empty string")
    check_backbone_kwargs(cfg.get("backbone_kwargs", {}))
    if cfg.get("monitor_task") is not None and not isinstance(cfg["monitor_task"], str):
        raise bad("monitor_task", "a task name or manifest path")


def check_backbone_kwargs(kwargs: Any) -> None:
    """`backbone_kwargs`: a table of timm.create_model arguments that dermctl does not set itself."""
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k for k in kwargs):
        raise UsageError(
            f"config key 'backbone_kwargs' = {kwargs!r}: expected a table of timm.create_model arguments, "
            "e.g. --set 'backbone_kwargs={\"patch_size\": 8}'"
        )
    owned = sorted(set(kwargs) & BACKBONE_OWNED_KWARGS)
    if owned:
        raise UsageError(
            f"config key 'backbone_kwargs': {', '.join(owned)} is set by dermctl itself "
            "(use --init for weights, drop_path_rate for stochastic depth)"
        )


def resume_differences(saved: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """Keys whose values differ between a saved run config and the one given to --resume."""
    saved = {**LEGACY_DEFAULTS, **saved}
    keys = (set(saved) | set(cfg)) - RESUME_FREE_KEYS
    return sorted(
        k for k in keys if json.dumps(saved.get(k), default=str) != json.dumps(cfg.get(k), default=str)
    )


def to_toml(cfg: dict[str, Any], comments: dict[str, str] | None = None) -> str:
    """A flat dict as TOML. None has no TOML spelling: such keys are written as comments (= default).
    `comments` adds a trailing comment to the keys it names (`--print-config`: each default's source)."""
    lines = []
    for key in sorted(cfg):
        value = cfg[key]
        line = f"# {key} = (unset)" if value is None else f"{key} = {_toml_value(value)}"
        if comments and key in comments:
            line += f"  # {comments[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def source_comments(cfg: dict[str, Any]) -> dict[str, str]:
    """Per key of a resolved config: the source of its default, or what it replaced when overridden."""
    method = get_method(cfg["method"])
    defaults, sources = method.defaults(), method.sources()
    out = {}
    for key, source in sources.items():
        if key not in cfg:
            continue
        if json.dumps(cfg[key], default=str) == json.dumps(defaults.get(key), default=str):
            out[key] = source
        else:
            out[key] = f"overridden; default {json.dumps(defaults.get(key), default=str)}: {source}"
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table; keys quoted so that any string is a valid key
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise UsageError(f"config value {value!r} of type {type(value).__name__} cannot be written as TOML")


# -- the per-method defaults tables of docs/methods-*.md ------------------------------------------------

DOCS_TABLE = re.compile(r"(<!-- defaults:(\w+) -->\n).*?(<!-- /defaults -->)", re.S)


def defaults_table(method: str) -> str:
    """Markdown table of every default of `method` and its source (generated into docs/methods-*.md)."""
    cls = get_method(method)
    defaults, sources = cls.defaults(), cls.sources()
    own = set(cls.default_sources)
    rows = ["| key | default | source |", "| --- | --- | --- |"]
    for key in sorted(defaults, key=lambda k: (k not in own, k)):  # the method's own keys first
        value = "(unset)" if defaults[key] is None else _toml_value(defaults[key])
        rows.append(f"| `{key}` | `{value}` | {sources.get(key, '')} |")
    return "\n".join(rows) + "\n"


def render_defaults_docs(text: str) -> str:
    """`text` with every `<!-- defaults:NAME -->...<!-- /defaults -->` block regenerated."""
    return DOCS_TABLE.sub(lambda m: m.group(1) + defaults_table(m.group(2)) + m.group(3), text)


if __name__ == "__main__":  # python -m dermctl.train.config docs/methods-cnn.md docs/methods-vit.md
    import sys

    for name in sys.argv[1:]:
        doc = Path(name)
        doc.write_text(render_defaults_docs(doc.read_text(encoding="utf-8")), encoding="utf-8")
