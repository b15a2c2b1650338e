from __future__ import annotations

import pickle

import pytest
import timm
import torch

from dermctl.errors import DataError, UnavailableError, UsageError
from dermctl.models.backbone import (
    BackboneMeta,
    create_backbone,
    default_feature_rule,
    export_backbone,
    extract_features,
    load_exported,
    load_state_file,
    select_channels,
)


def test_resnet_avgpool_matches_global_pool():
    torch.manual_seed(0)
    m = create_backbone("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = extract_features(m, x, "avgpool")
    assert feats.shape == (2, 512)
    assert torch.allclose(feats, m.forward_features(x).mean(dim=(2, 3)), atol=1e-5)
    assert default_feature_rule(m) == "avgpool"


def test_vit_cls4_is_last_four_normed_class_tokens():
    torch.manual_seed(0)
    m = create_backbone("vit_tiny_patch16_224").eval()
    x = torch.randn(2, 3, 32, 32)
    # Reference: run the blocks by hand and take the normed class token after each of the last 4.
    tok = m.patch_embed(x)
    tok = m._pos_embed(tok)
    tok = m.norm_pre(tok)
    outs = []
    for blk in m.blocks:
        tok = blk(tok)
        outs.append(m.norm(tok)[:, 0])
    expected = torch.cat(outs[-4:], dim=-1)
    got = extract_features(m, x, "cls4")
    assert got.shape == (2, 4 * 192)
    assert torch.allclose(got, expected, atol=1e-5)
    assert default_feature_rule(m) == "cls4"
    # the last block's class token equals timm's pooled output
    assert torch.allclose(extract_features(m, x, "cls"), m(x), atol=1e-5)
    assert extract_features(m, x, "cls4+avgpool").shape == (2, 5 * 192)
    # multi-crop sizes go through (dynamic image size)
    assert extract_features(m, torch.randn(1, 3, 96, 96), "cls4").shape == (1, 768)


def test_rules_checked_against_architecture():
    with pytest.raises(UsageError, match="avgpool is for CNNs"):
        extract_features(create_backbone("vit_tiny_patch16_224"), torch.randn(1, 3, 32, 32), "avgpool")
    with pytest.raises(UsageError, match="needs a ViT"):
        extract_features(create_backbone("resnet18"), torch.randn(1, 3, 32, 32), "cls4")


def test_unknown_backbone_is_usage_error():
    with pytest.raises(UsageError, match="--backbone: 'resnet9000'"):
        create_backbone("resnet9000")


def test_imagenet_offline_is_unavailable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnavailableError, match="ImageNet weights for resnet18"):
        create_backbone("resnet18", "imagenet")


def test_export_loads_in_dermctl_and_plain_timm(tmp_path):
    torch.manual_seed(1)
    m = create_backbone("resnet18", in_chans=1).eval()
    meta = BackboneMeta(
        timm_name="resnet18", feature_rule="avgpool", input_size=32, in_chans=1, channels="green"
    )
    weights = export_backbone(m, tmp_path, meta)
    x = torch.randn(2, 1, 32, 32)
    loaded, meta2 = load_exported(tmp_path)
    assert meta2.channels == "green" and meta2.sha256
    assert torch.allclose(loaded.eval()(x), m(x))
    plain = timm.create_model(
        "resnet18", pretrained=True, num_classes=0, in_chans=1, pretrained_cfg_overlay=dict(file=str(weights))
    ).eval()
    assert torch.allclose(plain(x), m(x))
    assert select_channels(torch.randn(2, 3, 4, 4), "green").shape == (2, 1, 4, 4)


def test_the_same_weights_export_to_the_same_bytes(tmp_path):
    """The file's sha256 is what embeddings and results record: identical runs must give one hash."""
    m = create_backbone("resnet10t").eval()
    meta = BackboneMeta(timm_name="resnet10t", feature_rule="avgpool", input_size=32)
    hashes = set()
    for i in range(12):  # the old header put its two metadata keys in a random order per write
        export_backbone(m, tmp_path / str(i), meta)
        hashes.add(load_exported(tmp_path / str(i))[1].sha256)
    assert len(hashes) == 1


def test_backbone_kwargs_travel_with_the_export(tmp_path):
    """A ViT built with timm arguments (patch 4 on 32 px) exports them; loading rebuilds the same net."""
    torch.manual_seed(2)
    kwargs = {"patch_size": 4, "img_size": 32, "depth": 2}
    m = create_backbone("vit_tiny_patch16_224", model_kwargs=kwargs).eval()
    assert m.patch_embed.patch_size == (4, 4) and len(m.blocks) == 2
    meta = BackboneMeta(
        timm_name="vit_tiny_patch16_224", feature_rule="cls4", input_size=32, model_kwargs=kwargs
    )
    export_backbone(m, tmp_path, meta)
    loaded, meta2 = load_exported(tmp_path)
    assert meta2.model_kwargs == kwargs
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(extract_features(loaded.eval(), x, "cls"), extract_features(m, x, "cls"), atol=1e-6)


def test_backbone_kwargs_an_architecture_does_not_take_is_a_usage_error():
    with pytest.raises(UsageError, match="backbone_kwargs .*resnet10t does not accept"):
        create_backbone("resnet10t", model_kwargs={"patch_size": 4})


def test_altered_export_detected(tmp_path):
    m = create_backbone("resnet18")
    weights = export_backbone(m, tmp_path, BackboneMeta(timm_name="resnet18", feature_rule="avgpool"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="content hash does not match"):
        load_exported(tmp_path)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_BACKBONE",))


def test_pickle_payload_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    with pytest.raises(DataError, match="evil.pt"):
        load_state_file(create_backbone("resnet18"), evil)
    assert not (tmp_path / "PWNED_BACKBONE").exists()
