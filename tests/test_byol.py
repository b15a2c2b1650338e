"""BYOL: loss hand values, separate EMA target with the exact update, predictor on online only, views,
training, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.augment import RandomGaussianBlur, RandomSolarize
from dermctl.methods.byol import BYOLMLP, BYOLLoss, byol_regression_loss

TINY = dict(
    backbone="resnet18", init="random", image_size=32, proj_hidden_dim=32, proj_out_dim=16, pred_hidden_dim=32
)


def _images(n: int = 4, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def _method():
    torch.manual_seed(0)
    return get_method("byol")(resolve_config("byol", TINY))


def _batch(method) -> dict:
    tf = method.transform(True)
    return default_collate([tf(im) for im in _images(4)])


def test_regression_loss_hand_values() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    assert byol_regression_loss(v, 5 * v).item() == pytest.approx(0.0, abs=1e-6)  # identical directions
    e1, e2 = torch.eye(3)[:2], torch.eye(3)[1:]
    assert byol_regression_loss(e1, e2).item() == pytest.approx(2.0)  # orthogonal: 2 per pair
    assert byol_regression_loss(v, -v).item() == pytest.approx(4.0)  # opposite
    # 60 degrees: 2 - 2 * 0.5 = 1; mean with an identical pair -> 0.5
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[0.5, 3**0.5 / 2], [2.0, 0.0]])
    assert byol_regression_loss(p, z).item() == pytest.approx(0.5, abs=1e-6)


def test_symmetrised_loss_is_the_sum_of_both_directions() -> None:
    e = torch.eye(4)
    p1, t2 = e[:2], e[:2]  # p1 predicts t2 perfectly: 0
    p2, t1 = e[:2], e[2:]  # p2 orthogonal to t1: 2
    assert BYOLLoss()(p1, p2, t1, t2).item() == pytest.approx(2.0)


def test_loss_stops_gradient_into_target() -> None:
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    byol_regression_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_defaults_follow_table_1_and_paper() -> None:
    cfg = resolve_config("byol")
    assert (cfg["optimizer"], cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (
        "adam",
        150,
        3e-3,
        "cosine",
    )
    assert cfg["momentum_teacher"] == 0.996 and cfg["backbone"] == "resnet50.tv_in1k"
    assert cfg["init"] == "imagenet" and cfg["lr_scaling"] == "linear256"  # the study authors' code
    assert (cfg["proj_hidden_dim"], cfg["proj_out_dim"], cfg["pred_hidden_dim"]) == (4096, 256, 4096)
    mlp = BYOLMLP(2048)
    dims = [(m.in_features, m.out_features) for m in mlp if isinstance(m, torch.nn.Linear)]
    assert dims == [(2048, 4096), (4096, 256)] and any(isinstance(m, torch.nn.BatchNorm1d) for m in mlp)


def test_target_is_a_separate_frozen_copy() -> None:
    m = _method()
    online = dict(m.backbone.named_parameters()) | {f"p.{k}": v for k, v in m.projector.named_parameters()}
    target = dict(m.target_backbone.named_parameters()) | {
        f"p.{k}": v for k, v in m.target_projector.named_parameters()
    }
    assert online.keys() == target.keys()
    for k in online:
        assert torch.equal(online[k], target[k])  # starts equal (Grill et al. Algorithm 1)
        assert online[k].data_ptr() != target[k].data_ptr()  # but is its own storage
        assert not target[k].requires_grad
    optimised = {id(p) for g in m.param_groups() for p in g["params"]}
    assert not optimised & {id(p) for p in target.values()}
    assert {id(p) for p in online.values()} <= optimised
    assert {id(p) for p in m.predictor.parameters()} <= optimised
    assert m.uses_ema and m.frozen_prefixes()
    # The predictor exists on the online side only.
    names = [n for n, _ in m.named_parameters()]
    assert any(n.startswith("predictor.") for n in names)
    assert not any(n.startswith("target_") and "predictor" in n for n in names)


def test_ema_update_exact_formula_and_only_in_training() -> None:
    m = _method()
    batch = _batch(m)
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.5)
    ctx = StepContext(it=0, epoch=0, training=True, momentum=0.9)
    loss, _ = m.training_step(batch, ctx)
    opt.zero_grad()
    loss.backward()
    targets = [*m.target_backbone.parameters(), *m.target_projector.parameters()]
    assert all(t.grad is None for t in targets)
    before = [t.detach().clone() for t in targets]
    opt.step()
    # The optimiser step leaves the target untouched ...
    assert all(torch.equal(t, b) for t, b in zip(targets, before, strict=True))
    onlines = [*m.backbone.parameters(), *m.projector.parameters()]
    assert any(not torch.equal(o, b) for o, b in zip(onlines, before, strict=True))
    # ... and the EMA moves it to m * target + (1 - m) * online.
    m.after_optimizer_step(ctx)
    for t, b, o in zip(targets, before, onlines, strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
    # Validation: no state change.
    snap = [t.detach().clone() for t in targets]
    m.after_optimizer_step(StepContext(it=1, epoch=0, training=False, momentum=0.5))
    assert all(torch.equal(t, s) for t, s in zip(targets, snap, strict=True))
    # Momentum 1 (end of the cosine schedule): target frozen.
    m.after_optimizer_step(StepContext(it=2, epoch=0, training=True, momentum=1.0))
    assert all(torch.equal(t, s) for t, s in zip(targets, snap, strict=True))


def test_training_step_uses_predictor_on_online_only() -> None:
    m = _method()
    batch = _batch(m)
    v1, v2 = batch["views"]
    loss, logs = m.training_step(batch, StepContext(it=0, epoch=0, training=True))
    assert "feature_std" in logs
    # Recompute with the modules by hand (train-mode BN: batch statistics over both views together).
    x = torch.cat([v1, v2])
    p = m.predictor(m.projector(m.backbone(x)))
    with torch.no_grad():
        z = m.target_projector(m.target_backbone(x))
    expected = byol_regression_loss(p[:4], z[4:]) + byol_regression_loss(p[4:], z[:4])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_asymmetric_views() -> None:
    m = _method()
    tf = m.transform(True)

    def probs(view, cls) -> list[float]:
        return [t.p for t in view.transforms if isinstance(t, cls)]

    assert probs(tf.view1, RandomGaussianBlur) == [1.0] and probs(tf.view2, RandomGaussianBlur) == [0.1]
    assert probs(tf.view1, RandomSolarize) == [0.0] and probs(tf.view2, RandomSolarize) == [0.2]
    out = tf(_images(1)[0])
    assert out["views"][0].shape == out["views"][1].shape == (3, 32, 32)


def test_tiny_training_lowers_loss_and_exports_online_encoder() -> None:
    m = _method()
    batch = _batch(m)
    opt = torch.optim.Adam([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(20):
        ctx = StepContext(it=it, epoch=0, training=True, momentum=0.99)
        loss, _ = m.training_step(batch, ctx)
        opt.zero_grad()
        loss.backward()
        m.before_optimizer_step(ctx)
        opt.step()
        m.after_optimizer_step(ctx)
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    backbone, meta = m.export()
    assert backbone is m.backbone
    assert (meta.feature_rule, meta.in_chans, meta.channels, meta.extra["method"]) == (
        "avgpool",
        3,
        "rgb",
        "byol",
    )
    assert m.collapse_reason({"feature_std": 1e-5}) is not None
    assert m.collapse_reason({"feature_std": 0.25}) is None
