"""--model resolution: runs, exported backbones, imagenet (offline with --weights), random."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dermctl.errors import DataError, UnavailableError, UsageError
from dermctl.eval.models import resolve_model, state_dict_sha256
from dermctl.models.backbone import BackboneMeta, create_backbone, export_backbone
from dermctl.workspace import Workspace


def test_random_is_seeded(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    a = resolve_model("random", ws, backbone="resnet10t")
    b = resolve_model("random", ws, backbone="resnet10t")
    assert a.model_id == "random-resnet10t" and a.init == "random"
    assert a.checkpoint_sha256 == b.checkpoint_sha256 == state_dict_sha256(b.backbone)
    assert a.meta.feature_rule == "avgpool" and not a.backbone.training
    assert not any(p.requires_grad for p in a.backbone.parameters())


def test_vit_defaults_to_cls4(tmp_path: Path) -> None:
    m = resolve_model("random", Workspace.at(tmp_path), backbone="vit_tiny_patch16_224")
    assert m.meta.feature_rule == "cls4" and m.model_id == "random-vit_tiny_patch16_224"


def _export(folder: Path, method: str = "dino", seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_backbone("resnet10t", "random")
    meta = BackboneMeta(
        timm_name="resnet10t", feature_rule="avgpool", input_size=32, extra={"method": method}
    )
    export_backbone(model, folder, meta)
    return model


def test_run_name_and_exported_paths(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    _export(ws.runs / "colorme-small", method="colorme")
    m = resolve_model("colorme-small", ws)
    assert m.model_id == "colorme-small" and m.init == "colorme" and m.meta.input_size == 32
    assert m.checkpoint_sha256 == m.meta.sha256 and len(m.checkpoint_sha256) == 64
    other = tmp_path / "elsewhere" / "mybackbone"
    _export(other, method="ibot", seed=2)
    for spec in (other, other / "backbone.json", other / "backbone.safetensors"):
        m2 = resolve_model(str(spec), ws)
        assert m2.model_id == "mybackbone" and m2.init == "ibot"
    assert m2.checkpoint_sha256 != m.checkpoint_sha256
    with pytest.raises(UsageError, match="--backbone"):
        resolve_model("colorme-small", ws, backbone="resnet18")


def test_imagenet_from_local_weights(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    torch.manual_seed(3)
    src = create_backbone("resnet10t", "random")
    weights = tmp_path / "resnet10t.pth"
    torch.save(src.state_dict(), weights)
    m = resolve_model("imagenet", ws, backbone="resnet10t", weights=weights)
    assert m.model_id == "imagenet-resnet10t" and m.init == "imagenet"
    assert state_dict_sha256(m.backbone) == state_dict_sha256(src)
    with pytest.raises(DataError, match="--weights"):
        resolve_model("imagenet", ws, backbone="resnet10t", weights=tmp_path / "missing.pth")


def test_imagenet_offline_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import dermctl.eval.models as models

    def offline(name, init, **kw):  # what create_backbone raises when the hub cannot be reached
        if init == "imagenet":
            raise UnavailableError(f"ImageNet weights for {name} could not be loaded (offline?)")
        return create_backbone(name, init, **kw)

    monkeypatch.setattr(models, "create_backbone", offline)
    with pytest.raises(UnavailableError, match="--weights FILE"):
        resolve_model("imagenet", Workspace.at(tmp_path), backbone="resnet10t")


def test_unknown_spec(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    _export(ws.runs / "byol-a")
    with pytest.raises(DataError, match=r"--model: 'nope' .*runs here: byol-a"):
        resolve_model("nope", ws)
    (ws.runs / "half").mkdir()
    with pytest.raises(DataError, match="no exported backbone"):
        resolve_model("half", ws)
