"""Resolve `--model SPEC` to a frozen backbone, how to feed it, and a stable model id.

SPEC is one of:
    <run name>                 runs/<name>/backbone.json of the workspace (a `dermctl pretrain` run)
    <folder> | <file>          an exported backbone: its folder, backbone.safetensors or backbone.json
    imagenet                   timm's ImageNet weights of --backbone (default resnet50); offline machines
                               pass `--weights FILE` (safetensors or a weights-only torch file)
    random                     seeded random initialisation of --backbone (the "random init" reference)

The model id names the embeddings and result folders: the run name, the folder name,
`imagenet-<backbone>` or `random-<backbone>`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dermctl.errors import DataError, UnavailableError, UsageError
from dermctl.models.backbone import (
    BackboneMeta,
    create_backbone,
    default_feature_rule,
    load_exported,
    pretrained_stats,
)
from dermctl.provenance import sha256_file
from dermctl.workspace import Workspace

DEFAULT_BACKBONE = "resnet50"
RANDOM_SEED = 0


@dataclass
class LoadedModel:
    """A frozen backbone ready for `embed`."""

    backbone: nn.Module
    meta: BackboneMeta
    model_id: str
    init: str
    checkpoint_sha256: str


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over the parameter names, shapes and bytes of a model (identifies downloaded or random
    weights that have no file of their own)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_for(model: nn.Module, name: str, source: str) -> BackboneMeta:
    mean, std = pretrained_stats(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (3, 224, 224))[-1]
    return BackboneMeta(
        timm_name=name,
        feature_rule=default_feature_rule(model),
        input_size=int(size),
        mean=mean,
        std=std,
        source=source,
    )


def _reference(spec: str, backbone: str | None, weights: Path | None) -> LoadedModel:
    name = backbone or DEFAULT_BACKBONE
    if spec == "random":
        if weights is not None:
            raise UsageError("--weights: only used with --model imagenet (random init has no weights)")
        torch.manual_seed(RANDOM_SEED)
        model = create_backbone(name, "random")
        return LoadedModel(
            model, _meta_for(model, name, "random"), f"random-{name}", "random", state_dict_sha256(model)
        )
    if weights is not None:
        w = Path(weights).expanduser()
        if not w.is_file():
            raise DataError(f"--weights: {w} not found (expected a .safetensors or weights-only torch file)")
        model = create_backbone(name, w)
        digest = sha256_file(w)
    else:
        try:
            model = create_backbone(name, "imagenet")
        except UnavailableError as exc:
            raise UnavailableError(
                f"--model imagenet: ImageNet weights of {name} cannot be fetched here (offline?); "
                f"download them elsewhere and pass --weights FILE ({exc.message[:120]})"
            ) from exc
        digest = state_dict_sha256(model)
    return LoadedModel(model, _meta_for(model, name, "imagenet"), f"imagenet-{name}", "imagenet", digest)


def _exported(path: Path, model_id: str, backbone: str | None) -> LoadedModel:
    model, meta = load_exported(path)
    if backbone is not None and backbone != meta.timm_name:
        raise UsageError(f"--backbone: {backbone!r} differs from the model's own backbone {meta.timm_name!r}")
    folder = path if path.is_dir() else path.parent
    digest = meta.sha256 or sha256_file(folder / "backbone.safetensors")
    init = str(meta.extra.get("method") or meta.source or "custom")
    return LoadedModel(model, meta, model_id, init, digest)


def resolve_model(
    spec: str, workspace: Workspace, backbone: str | None = None, weights: Path | None = None
) -> LoadedModel:
    """Load the backbone named by `spec` (see the module docstring) in eval mode."""
    spec = spec.strip()
    if not spec:
        raise UsageError(
            "--model: empty value (expected a run name, a backbone folder/file, imagenet or random)"
        )
    if spec in ("imagenet", "random"):
        loaded = _reference(spec, backbone, weights)
    else:
        if weights is not None:
            raise UsageError("--weights: only used with --model imagenet")
        as_path = Path(spec).expanduser()
        run_dir = workspace.runs / spec
        if as_path.exists():
            if as_path.is_file() and as_path.suffix not in (".safetensors", ".json"):
                raise DataError(f"--model: {as_path} is not backbone.safetensors or backbone.json")
            model_id = (as_path if as_path.is_dir() else as_path.parent).resolve().name
            loaded = _exported(as_path, model_id, backbone)
        elif (run_dir / "backbone.json").is_file():
            loaded = _exported(run_dir, spec, backbone)
        elif run_dir.is_dir():
            raise DataError(
                f"--model: run {run_dir} has no exported backbone.json yet (is it still training?)"
            )
        else:
            runs = (
                sorted(d.name for d in workspace.runs.iterdir() if (d / "backbone.json").is_file())
                if workspace.runs.is_dir()
                else []
            )
            raise DataError(
                f"--model: {spec!r} is not a run in {workspace.runs}, an exported backbone folder/file, "
                f"'imagenet' or 'random'" + (f" (runs here: {', '.join(runs)})" if runs else "")
            )
    loaded.backbone.eval()
    for p in loaded.backbone.parameters():
        p.requires_grad_(False)
    return loaded
