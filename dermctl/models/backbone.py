"""Backbone creation through timm, the paper's feature rules, and the exported-backbone format.

Feature rules (how a frozen backbone turns an image into one vector):
    avgpool        CNN: output of the last global average pool (the paper's ResNet rule)
    cls4           ViT: class tokens of the last 4 blocks, each after the final norm, concatenated
                   (DINO's linear evaluation and the paper's ViT rule)
    cls            ViT: the last block's class token
    cls4+avgpool   ViT: cls4 plus the average of the last block's patch tokens (DINO's `--avgpool_patchtokens`)

An exported backbone is two files side by side:
    backbone.safetensors   the timm model's state dict (num_classes=0): plain timm can load it with
                           timm.create_model(name, pretrained=True, num_classes=0,
                                             pretrained_cfg_overlay=dict(file="backbone.safetensors"))
    backbone.json          {"timm_name", "feature_rule", "input_size", "mean", "std", "in_chans",
                            "channels" ("rgb" | "green"), "model_kwargs", "sha256", "source", ...}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dermctl.errors import DataError, UnavailableError, UsageError
from dermctl.provenance import sha256_file
from dermctl.workspace import atomic_path, atomic_write_json

FEATURE_RULES = ("avgpool", "cls4", "cls", "cls4+avgpool")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneMeta:
    """Everything needed to rebuild a backbone and feed it images the way it was trained."""

    timm_name: str
    feature_rule: str
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    in_chans: int = 3
    channels: str = "rgb"  # "green": the backbone sees only the green channel (ColorMe)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BackboneMeta:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "timm_name" not in known or "feature_rule" not in known:
            raise DataError("backbone.json needs 'timm_name' and 'feature_rule'")
        known["mean"] = tuple(known.get("mean", IMAGENET_MEAN))
        known["std"] = tuple(known.get("std", IMAGENET_STD))
        return cls(**known)


def is_vit(model: nn.Module) -> bool:
    """Token models with a class token (timm ViT family)."""
    return hasattr(model, "cls_token") and getattr(model, "cls_token", None) is not None


def default_feature_rule(model: nn.Module) -> str:
    return "cls4" if is_vit(model) else "avgpool"


def _timm():
    import timm

    return timm


def check_backbone_name(name: str) -> str:
    timm = _timm()
    if not timm.is_model(name):
        raise UsageError(f"--backbone: {name!r} is not a timm model name (see timm.list_models())")
    return name


def create_backbone(
    name: str,
    init: str | os.PathLike[str] = "random",
    *,
    in_chans: int = 3,
    drop_path_rate: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model without classifier (`num_classes=0`).

    init: "random", "imagenet" (timm's pretrained weights: fetched online or taken
    from the Hugging Face cache), or a path to a weights file (safetensors or a plain state dict saved
    with torch.save) for offline machines. ViTs are built with `dynamic_img_size=True` so that multi-crop
    views of any size (and tiny test images) go through with interpolated position embeddings.
    """
    timm = _timm()
    check_backbone_name(name)
    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=in_chans)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    kwargs.update(model_kwargs or {})
    init_s = str(init)
    pretrained = init_s != "random"
    weights = check_init(name, init_s)
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    try:
        model = _create(timm, name, pretrained, kwargs)
    except TypeError as exc:  # an argument this architecture does not take (e.g. patch_size on a CNN)
        raise UsageError(
            f"backbone_kwargs {model_kwargs or {}}: {name} does not accept them ({str(exc).splitlines()[0][:160]})"
        ) from exc
    except (OSError, RuntimeError, ValueError) as exc:
        if init_s == "imagenet":
            raise UnavailableError(
                f"ImageNet weights for {name} could not be loaded (offline?): {str(exc).splitlines()[0][:200]}; "
                "pass a local weights file instead"
            ) from exc
        raise DataError(
            f"--init: cannot load weights {init_s} into {name}: {str(exc).splitlines()[0][:200]}"
        ) from exc
    return model


def check_init(name: str, init: str | os.PathLike[str]) -> Path | None:
    """Check, without building the model, that `init` can be had: the local weights file (returned) or
    ImageNet weights in the Hugging Face cache (returned) or a reachable hub (None, fetched on creation).
    Raises DataError (no such file) or UnavailableError (ImageNet weights offline) at once, instead of
    waiting through the hub client's retries on an offline machine."""
    init_s = str(init)
    if init_s == "random":
        return None
    if init_s != "imagenet":
        path = Path(init_s).expanduser()
        if not path.is_file():
            raise DataError(f"--init: weights file {path} not found")
        return path
    cached = _cached_hub_weights(_timm(), name)
    if cached is None and not _hub_reachable():
        raise UnavailableError(
            f"ImageNet weights for {name} are not in the local Hugging Face cache and the hub cannot be "
            "reached (offline); download them elsewhere and pass the weights file instead"
        )
    return cached


def _cached_hub_weights(timm: Any, name: str) -> Path | None:
    """The pretrained weights file of `name` if the Hugging Face cache already holds it."""
    try:
        from huggingface_hub import try_to_load_from_cache

        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return Path(found)
    except Exception:  # no hub id, no cache, or an old hub client: fall back to timm's own loading
        return None
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") or os.environ.get("DERMCTL_OFFLINE", "") not in (
        "",
        "0",
    ):
        return False
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _create(timm: Any, name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, dynamic_img_size=True, **kwargs)
    except TypeError:  # only token models know dynamic_img_size
        return timm.create_model(name, pretrained=pretrained, **kwargs)


def pretrained_stats(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the model's pretrained_cfg asks for (ImageNet's when it says nothing)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def extract_features(model: nn.Module, x: torch.Tensor, rule: str) -> torch.Tensor:
    """One feature vector per image of `x` (B, C, H, W) following `rule`."""
    if rule == "avgpool":
        if is_vit(model):
            raise UsageError("--feature-rule: avgpool is for CNNs; use cls4, cls or cls4+avgpool for ViTs")
        return model(x).flatten(1)
    if not is_vit(model):
        raise UsageError(f"--feature-rule: {rule} needs a ViT backbone; use avgpool for CNNs")
    if rule == "cls":
        return (
            model.forward_head(model.forward_features(x), pre_logits=True)
            if _pools_token(model)
            else _cls_tokens(model, x, 1)
        )
    if rule in ("cls4", "cls4+avgpool"):
        feats = _cls_tokens(model, x, 4)
        if rule == "cls4+avgpool":
            tokens = model.forward_features(x)
            n_prefix = getattr(model, "num_prefix_tokens", 1)
            feats = torch.cat([feats, tokens[:, n_prefix:].mean(dim=1)], dim=-1)
        return feats
    raise UsageError(f"--feature-rule: unknown rule {rule!r} (known: {', '.join(FEATURE_RULES)})")


def _pools_token(model: nn.Module) -> bool:
    return getattr(model, "global_pool", "token") == "token"


def _cls_tokens(model: nn.Module, x: torch.Tensor, n: int) -> torch.Tensor:
    out = model.forward_intermediates(
        x, indices=n, norm=True, return_prefix_tokens=True, intermediates_only=True
    )
    return torch.cat([prefix[:, 0] for _spatial, prefix in out], dim=-1)


def feature_dim(model: nn.Module, rule: str, input_size: int = 224, in_chans: int = 3) -> int:
    with torch.no_grad():
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out = extract_features(model, torch.zeros(1, in_chans, input_size, input_size, device=device), rule)
        model.train(was_training)
    return int(out.shape[-1])


def select_channels(x: torch.Tensor, channels: str) -> torch.Tensor:
    """Feed only what the backbone was trained on: `green` keeps channel 1 of an RGB batch."""
    if channels == "green":
        return x[:, 1:2]
    return x


def export_backbone(model: nn.Module, folder: str | os.PathLike[str], meta: BackboneMeta) -> Path:
    """Write backbone.safetensors and backbone.json atomically; returns the safetensors path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    weights = folder / "backbone.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        # One metadata key only: safetensors writes its metadata from a hash map, so two keys came out in
        # either order and the same weights got another file hash (the architecture is in backbone.json).
        save_file(state, str(tmp), metadata={"format": "pt"})
    meta.sha256 = sha256_file(weights)
    atomic_write_json(folder / "backbone.json", meta.to_json())
    return weights


def load_exported(path: str | os.PathLike[str]) -> tuple[nn.Module, BackboneMeta]:
    """Load an exported backbone (its folder, its .safetensors or its .json) without executing code."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta_path = folder / "backbone.json"
    weights = folder / "backbone.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise DataError(f"{folder}: not an exported backbone (needs backbone.json and backbone.safetensors)")
    try:
        meta = BackboneMeta.from_json(json.loads(meta_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{meta_path}: malformed backbone description: {exc}") from exc
    if meta.sha256 and sha256_file(weights) != meta.sha256:
        raise DataError(f"{weights}: content hash does not match backbone.json (truncated or altered file)")
    model = create_backbone(meta.timm_name, "random", in_chans=meta.in_chans, model_kwargs=meta.model_kwargs)
    load_state_file(model, weights)
    return model, meta


def load_state_file(model: nn.Module, path: str | os.PathLike[str], strict: bool = True) -> None:
    """Load a safetensors file or a weights-only torch file; pickled code is refused."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except Exception as exc:  # safetensors and torch raise many types for damaged files
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise DataError(f"{p}: refusing to load: the file needs pickle code execution") from exc
        raise DataError(
            f"{p}: cannot read weights ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from exc
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise DataError(f"{p}: weights do not fit the model: {str(exc).splitlines()[0][:200]}") from exc
