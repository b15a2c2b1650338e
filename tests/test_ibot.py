"""iBOT: loss (hand-computed masked averaging), patch centre, temperatures, the mask token, masked views,
teacher routing, EMA, a tiny training run and export."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.errors import UsageError
from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.ibot import MaskedViT, iBOT, iBOTHead, iBOTLoss, patch_temp_schedule
from dermctl.models.backbone import export_backbone, load_exported

TINY = dict(
    image_size=64,  # 4 x 4 patch grid with ViT/16
    local_crop_size=16,
    local_crops_number=2,
    out_dim=32,
    patch_out_dim=32,
    hidden_dim=32,
    bottleneck_dim=16,
    warmup_teacher_temp_epochs=0,
    batch_size=4,
)


def _method(**overrides) -> iBOT:
    torch.manual_seed(0)
    return get_method("ibot")(resolve_config("ibot", {**TINY, **overrides}))


def _batch(method, n: int = 4, size: int = 72) -> dict:
    random.seed(0)
    torch.manual_seed(0)
    tf = method.transform(True)
    imgs = [
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8))
        for i in range(n)
    ]
    return default_collate([tf(im) for im in imgs])


def _ctx(it: int = 0, epoch: int = 1, training: bool = True, momentum: float = 0.996) -> StepContext:
    return StepContext(it=it, epoch=epoch, training=training, momentum=momentum)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# -- loss ---------------------------------------------------------------------------------------------


def test_ibot_loss_matches_hand_computation():
    rng = np.random.RandomState(0)
    B, N, K, G, L = 2, 3, 4, 2, 1
    s_cls, t_cls = rng.randn((G + L) * B, K), rng.randn(G * B, K)
    s_patch, t_patch = rng.randn(G * B, N, K), rng.randn(G * B, N, K)
    masks = [
        np.array([[1, 0, 1], [0, 0, 0]], bool),
        np.array([[0, 1, 0], [1, 1, 1]], bool),
    ]  # image 2 of crop 1 unmasked
    c, c2 = rng.randn(1, K) * 0.1, rng.randn(1, 1, K) * 0.1
    tt, tpt, st = 0.04, 0.07, 0.1
    fn = iBOTLoss(K, K, n_global=G, lambda1=1.0, lambda2=1.0)
    fn.center.copy_(torch.tensor(c, dtype=torch.float32))
    fn.center2.copy_(torch.tensor(c2, dtype=torch.float32))
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    got = fn(f(s_cls), f(s_patch), f(t_cls), f(t_patch), [torch.tensor(m) for m in masks], tt, tpt)

    # class-token term: DINO over (teacher global q, student view v != q)
    q = _np_softmax((t_cls - c) / tt)
    logp = np.log(_np_softmax(s_cls / st))
    cls_terms = [
        np.mean([-(q[iq * B + b] * logp[v * B + b]).sum() for b in range(B)])
        for iq in range(G)
        for v in range(G + L)
        if v != iq
    ]
    # patch term: per image, mean CE over its masked patches (0 when none), then mean over images and crops
    qp = _np_softmax((t_patch - c2) / tpt)
    logps = np.log(_np_softmax(s_patch / st))
    crop_terms = []
    for g in range(G):
        per_image = []
        for b in range(B):
            ces = [-(qp[g * B + b, n] * logps[g * B + b, n]).sum() for n in range(N) if masks[g][b, n]]
            per_image.append(np.mean(ces) if ces else 0.0)
        crop_terms.append(np.mean(per_image))
    expected_cls, expected_patch = np.mean(cls_terms), np.mean(crop_terms)
    assert fn.last_terms["cls_loss"] == pytest.approx(expected_cls, rel=1e-5)
    assert fn.last_terms["patch_loss"] == pytest.approx(expected_patch, rel=1e-5)
    assert got.item() == pytest.approx(expected_cls + expected_patch, rel=1e-5)
    # both centres moved by their own EMA; the patch centre averages over patches first
    assert np.allclose(fn.center.numpy(), 0.9 * c + 0.1 * t_cls.mean(0, keepdims=True), atol=1e-6)
    assert np.allclose(fn.center2.numpy(), 0.9 * c2 + 0.1 * t_patch.mean(1).mean(0)[None, None], atol=1e-6)


def test_ibot_loss_lambdas_mask_formats_and_no_update():
    torch.manual_seed(0)
    args = (torch.randn(6, 5), torch.randn(4, 4, 5), torch.randn(4, 5), torch.randn(4, 4, 5))
    masks = torch.rand(4, 2, 2) > 0.5
    base = iBOTLoss(5, 5)
    total = base(*args, masks, update_center=False)  # one stacked (n_global * B, h, w) tensor
    assert torch.count_nonzero(base.center) == 0 and torch.count_nonzero(base.center2) == 0
    split = iBOTLoss(5, 5)(*args, [m.flatten(1) for m in masks.split(2)], update_center=False)
    assert total.item() == pytest.approx(split.item())
    weighted = iBOTLoss(5, 5, lambda1=0.5, lambda2=2.0)
    w = weighted(*args, masks, update_center=False)
    assert w.item() == pytest.approx(
        0.5 * base.last_terms["cls_loss"] + 2.0 * base.last_terms["patch_loss"], rel=1e-5
    )
    none = iBOTLoss(5, 5)
    none(*args, torch.zeros(4, 2, 2, dtype=torch.bool))
    assert none.last_terms["patch_loss"] == 0.0


def test_patch_temperature_schedule():
    s = patch_temp_schedule(0.04, 0.07, 30, 100)
    assert s[0] == pytest.approx(0.04) and s[29] == pytest.approx(0.07) and s[99] == pytest.approx(0.07)
    delayed = patch_temp_schedule(0.04, 0.07, 30, 100, start_epoch=5)
    assert len(delayed) == 100
    assert np.allclose(delayed[:6], 0.04) and delayed[34] == pytest.approx(0.07)
    assert delayed[20] == pytest.approx(0.04 + 0.03 * 15 / 29)
    m = _method(warmup_teacher_temp_epochs=2, warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07)
    sched = m.schedules(epochs=3, iters_per_epoch=2)
    assert np.allclose(sched["teacher_patch_temp"], [0.04, 0.04, 0.07, 0.07, 0.07, 0.07])
    assert np.allclose(sched["teacher_temp"], 0.04)


# -- backbone and head --------------------------------------------------------------------------------


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=0, dynamic_img_size=True).eval()


def test_masked_vit_without_mask_equals_timm_and_mask_token_is_used():
    net = MaskedViT(_vit()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = net(x)
        assert plain.shape == (2, 1 + 16, 192)
        assert torch.allclose(plain, net.vit.forward_features(x), atol=1e-5)
        assert torch.allclose(plain[:, 0], net.vit(x), atol=1e-5)
        mask = torch.zeros(2, 4, 4, dtype=torch.bool)
        mask[0, 1:3, 1:3] = True
        masked = net(x, mask)
        assert not torch.allclose(masked[0], plain[0], atol=1e-4)  # masked image changes
        assert torch.allclose(masked[1], plain[1], atol=1e-5)  # unmasked image does not
        net.mask_token.copy_(torch.randn_like(net.mask_token))  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(net(x, mask)[0], masked[0], atol=1e-4)  # the token's value matters
        # masking equals feeding the mask token in place of those patch embeddings
        emb = net.vit.patch_embed(x)
        emb[0, 1:3, 1:3] = net.mask_token[0]
        ref = net.vit.norm(net.vit.blocks(net.vit.norm_pre(net.vit._pos_embed(emb))))
        assert torch.allclose(net(x, mask), ref, atol=1e-5)


def test_masked_vit_refuses_cnns():
    with pytest.raises(UsageError, match="--backbone"):
        MaskedViT(timm.create_model("resnet18", num_classes=0))


def test_ibot_head_shared_and_separate():
    shared = iBOTHead(12, 10, 7, shared_head=True, hidden_dim=16, bottleneck_dim=8)
    assert shared.last_layer2 is shared.last_layer
    cls, patch = shared(torch.randn(2, 5, 12))
    assert cls.shape == (2, 10) and patch.shape == (2, 4, 10)
    assert shared(torch.randn(3, 12)).shape == (3, 10)
    sep = iBOTHead(12, 10, 7, shared_head=False, hidden_dim=16, bottleneck_dim=8)
    assert sep.last_layer2 is not sep.last_layer
    cls, patch = sep(torch.randn(2, 5, 12))
    assert cls.shape == (2, 10) and patch.shape == (2, 4, 7)
    # the same MLP serves both: the class logits equal the DINO head on the class token
    tokens = torch.randn(2, 5, 12)
    assert torch.allclose(sep(tokens)[0], sep(tokens[:, 0]), atol=1e-6)


# -- method -------------------------------------------------------------------------------------------


def test_defaults():
    cfg = resolve_config("ibot")
    assert (
        cfg["backbone"] == "vit_tiny_patch16_224" and cfg["optimizer"] == "adamw" and cfg["batch_size"] == 56
    )
    assert cfg["lr"] == 5e-4 and cfg["lr_schedule"] == "cosine"
    assert cfg["out_dim"] == 8192 and cfg["patch_out_dim"] == 8192 and cfg["shared_head"] is True
    assert cfg["local_crops_number"] == 10 and cfg["global_crops_scale"] == [0.14, 1.0]
    assert cfg["local_crops_scale"] == [0.05, 0.4]
    assert (cfg["pred_ratio"], cfg["pred_ratio_var"], cfg["mask_prob"], cfg["pred_shape"]) == (
        0.3,
        0.2,
        0.5,
        "block",
    )
    assert cfg["teacher_patch_temp"] == 0.07 and cfg["warmup_teacher_patch_temp"] == 0.04
    assert cfg["lambda1"] == cfg["lambda2"] == 1.0 and cfg["pred_start_epoch"] == 0


def test_transform_gives_views_and_one_mask_per_global_crop():
    m = _method(mask_prob=1.0, pred_ratio=0.3, pred_ratio_var=0.0)
    batch = _batch(m)
    assert [tuple(g.shape) for g in batch["globals"]] == [(4, 3, 64, 64)] * 2
    assert [tuple(v.shape) for v in batch["locals"]] == [(4, 3, 16, 16)] * 2
    assert [tuple(k.shape) for k in batch["masks"]] == [(4, 4, 4)] * 2
    assert all(k.dtype == torch.bool for k in batch["masks"])
    assert all(k.flatten(1).sum(1).min() >= 1 for k in batch["masks"])
    # same seed, same masks
    again = _batch(m)
    assert all(torch.equal(a, b) for a, b in zip(batch["masks"], again["masks"], strict=True))


def test_teacher_sees_unmasked_globals_and_student_masked_globals_plus_locals():
    m = _method()
    calls = {"teacher": [], "student": []}
    for who in calls:
        net = getattr(m, who).backbone
        net.register_forward_hook(
            lambda mod, args, out, who=who: calls[who].append(
                (tuple(args[0].shape), len(args) > 1 and args[1] is not None)
            )
        )
    m.training_step(_batch(m, n=2), _ctx())
    assert calls["teacher"] == [((4, 3, 64, 64), False)]
    assert calls["student"] == [((4, 3, 64, 64), True), ((4, 3, 16, 16), False)]


def test_mask_token_gets_gradient_and_teacher_is_separate_frozen_copy():
    m = _method(mask_prob=1.0, pred_ratio=0.3, pred_ratio_var=0.0)
    loss, logs = m.training_step(_batch(m, n=2), _ctx())
    loss.backward()
    assert (
        m.student.backbone.mask_token.grad is not None and m.student.backbone.mask_token.grad.abs().sum() > 0
    )
    assert logs["patch_loss"] > 0 and logs["mask_ratio"] > 0
    s = dict(m.student.named_parameters())
    for n, t in m.teacher.named_parameters():
        assert not t.requires_grad and t.data_ptr() != s[n].data_ptr()
    assert not [mod for mod in m.teacher.modules() if type(mod).__name__ == "DropPath"]


def test_ema_and_validation_leave_state_alone():
    m = _method()
    batch = _batch(m, n=2)
    before = {n: p.detach().clone() for n, p in m.teacher.named_parameters()}
    centres = (m.loss.center.clone(), m.loss.center2.clone())
    with torch.no_grad():
        m.training_step(batch, _ctx(training=False))
    m.after_optimizer_step(_ctx(training=False, momentum=0.5))
    assert torch.equal(m.loss.center, centres[0]) and torch.equal(m.loss.center2, centres[1])
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.5)
    loss, _ = m.training_step(batch, _ctx())
    loss.backward()
    opt.step()
    assert not torch.equal(m.loss.center2, centres[1])
    m.after_optimizer_step(_ctx(momentum=0.8))
    s = dict(m.student.named_parameters())
    for n, p in m.teacher.named_parameters():
        assert torch.allclose(p, 0.8 * before[n] + 0.2 * s[n].detach(), atol=1e-6), n


def test_no_masked_prediction_before_pred_start_epoch():
    m = _method(pred_start_epoch=2, mask_prob=1.0, pred_ratio_var=0.0)
    batch = _batch(m, n=2)
    _, early = m.training_step(batch, _ctx(epoch=1))
    _, late = m.training_step(batch, _ctx(epoch=2))
    assert early["patch_loss"] == 0.0 and early["mask_ratio"] == 0.0
    assert late["patch_loss"] > 0 and late["mask_ratio"] > 0


def test_tiny_training_run_loss_falls():
    m = _method(center_momentum=1.0, center_momentum2=1.0, mask_prob=1.0)
    batch = _batch(m, n=2)
    opt = torch.optim.AdamW([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(15):
        ctx = _ctx(it=it, epoch=1, momentum=1.0)
        loss, logs = m.training_step(batch, ctx)
        opt.zero_grad()
        loss.backward()
        m.before_optimizer_step(ctx)
        opt.step()
        m.after_optimizer_step(ctx)
        losses.append(loss.item())
        assert math.isfinite(logs["cls_loss"]) and math.isfinite(logs["patch_loss"])
    assert np.mean(losses[-5:]) < 0.7 * losses[0]


def test_export_is_plain_timm_vit_of_the_teacher(tmp_path):
    m = _method()
    vit, meta = m.export()
    assert vit is m.teacher.backbone.vit and not hasattr(vit, "mask_token")
    assert meta.feature_rule == "cls4" and meta.extra == {"method": "ibot", "export": "teacher"}
    assert _method(export="student").export()[0] is not None
    student = _method(export="student")
    assert student.export()[0] is student.student.backbone.vit
    export_backbone(vit, tmp_path, meta)
    loaded, _ = load_exported(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    vit.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), vit(x), atol=1e-5)


def test_ibot_needs_a_vit_and_valid_masking_config():
    with pytest.raises(UsageError, match="--backbone"):
        _method(backbone="resnet18")
    with pytest.raises(UsageError, match="mask_prob"):
        _method(mask_prob=1.5)
    with pytest.raises(UsageError, match="pred_shape"):
        _method(pred_shape="ring")


def test_cli_pretrain_runs_ibot_end_to_end(tmp_path):
    from helpers_methods import make_corpus, make_images
    from typer.testing import CliRunner

    from dermctl.cli.app import app

    root = tmp_path / "ws"
    (root / "manifests").mkdir(parents=True)
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 8, size=40))
    cfg = {
        **TINY,
        "image_size": 32,
        "num_workers": 0,
        "warmup_epochs": 0,
        "mask_prob": 1.0,
        "pred_ratio": 0.5,
    }
    sets = [f"{k}={v}" for k, v in cfg.items() if k != "batch_size"] + ["pred_ratio_var=0.0"]
    args = ["-C", str(root), "--json", "pretrain", "--method", "ibot", "--data", str(man), "--epochs", "2"]
    args += ["--device", "cpu", "--batch-size", "3"] + [a for s in sets for a in ("--set", s)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "finished" and out["epochs_run"] == 2
    model, meta = load_exported(out["backbone"])
    assert meta.feature_rule == "cls4" and meta.extra["method"] == "ibot"
    header = (root / "runs" / out["name"] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"teacher_temp", "teacher_patch_temp", "cls_loss", "patch_loss", "mask_ratio"} <= set(header)
