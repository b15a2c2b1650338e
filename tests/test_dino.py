"""DINO: head, loss (hand-computed), centring, teacher temperature, EMA teacher, last-layer freezing,
multi-crop routing, a tiny training run and export."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.errors import UsageError
from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.dino import (
    DINO,
    DINOHead,
    DINOLoss,
    distribution_health,
    ema_update,
    teacher_temp_schedule,
)
from dermctl.models.backbone import export_backbone, extract_features, load_exported

TINY = dict(
    image_size=32,
    local_crop_size=16,
    local_crops_number=2,
    out_dim=64,
    hidden_dim=32,
    bottleneck_dim=16,
    warmup_teacher_temp_epochs=0,
    batch_size=4,
)


def _method(**overrides) -> DINO:
    torch.manual_seed(0)
    return get_method("dino")(resolve_config("dino", {**TINY, **overrides}))


def _batch(method, n: int = 4, size: int = 40) -> dict:
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


# -- loss ---------------------------------------------------------------------------------------------


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_dino_loss_matches_hand_computation_with_centring():
    # 2 global views + 1 local view, batch 2, out_dim 3
    s = np.array(
        [
            [1.0, 0.0, -1.0],
            [0.5, 0.2, 0.1],
            [0.0, 2.0, 0.0],
            [1.0, 1.0, 3.0],
            [-1.0, 0.5, 0.0],
            [0.3, 0.3, 0.9],
        ]
    )
    t = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.5, 0.5, 0.5]])
    c = np.array([[0.2, -0.1, 0.3]])
    tt, st = 0.04, 0.1
    loss_fn = DINOLoss(out_dim=3, n_global=2, student_temp=st, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor(c, dtype=torch.float32))
    got = loss_fn(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), teacher_temp=tt)

    B = 2
    q = _np_softmax((t - c) / tt)
    logp = np.log(_np_softmax(s / st))
    terms = []
    for iq in range(2):  # teacher views
        for v in range(3):  # student views
            if v == iq:
                continue
            ce = [-(q[iq * B + b] * logp[v * B + b]).sum() for b in range(B)]
            terms.append(np.mean(ce))
    assert len(terms) == 4
    assert got.item() == pytest.approx(float(np.mean(terms)), rel=1e-5)
    # the centre moved to 0.9 c + 0.1 mean(t) after the loss was computed
    expected_c = 0.9 * c + 0.1 * t.mean(0, keepdims=True)
    assert np.allclose(loss_fn.center.numpy(), expected_c, atol=1e-6)


def test_dino_loss_accepts_view_lists_and_skips_update_when_asked():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(4, 5)
    a = DINOLoss(5)(s, t, 0.04)
    b_fn = DINOLoss(5)
    b = b_fn(list(s.split(2)), list(t.split(2)), 0.04, update_center=False)
    assert a.item() == pytest.approx(b.item())
    assert torch.count_nonzero(b_fn.center) == 0


def test_dino_loss_gradient_flows_only_to_the_student():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(4, 4, requires_grad=True)
    DINOLoss(4)(s, t, 0.04).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_centre_ema_over_repeated_updates():
    loss_fn = DINOLoss(2, center_momentum=0.9)
    t1, t2 = torch.tensor([[1.0, 3.0], [3.0, 1.0]]), torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    loss_fn.update_center(t1)
    assert torch.allclose(loss_fn.center, torch.tensor([[0.2, 0.2]]))
    loss_fn.update_center(t2)
    assert torch.allclose(loss_fn.center, torch.tensor([[0.18, 0.28]]))


def test_teacher_temperature_schedule_values():
    sched = teacher_temp_schedule(0.04, 0.07, 30, 100)
    assert len(sched) == 100
    assert sched[0] == pytest.approx(0.04)
    assert sched[15] == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert (
        sched[29] == pytest.approx(0.07)
        and sched[30] == pytest.approx(0.07)
        and sched[99] == pytest.approx(0.07)
    )
    short = teacher_temp_schedule(0.04, 0.07, 30, 10)  # first 10 epochs of the full schedule
    assert len(short) == 10 and short[9] == pytest.approx(0.04 + 0.03 * 9 / 29)
    assert np.allclose(teacher_temp_schedule(0.04, 0.04, 0, 5), 0.04)


def test_method_schedule_is_per_epoch_and_read_by_epoch():
    m = _method(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3)
    sched = m.schedules(epochs=4, iters_per_epoch=2)["teacher_temp"]
    assert np.allclose(sched, [0.04, 0.04, 0.055, 0.055, 0.07, 0.07, 0.07, 0.07])
    assert m.teacher_temp_at(_ctx(it=3, epoch=1)) == pytest.approx(0.055)
    assert m.teacher_temp_at(_ctx(it=0, epoch=1, training=False)) == pytest.approx(0.055)  # validation
    assert m.teacher_temp_at(_ctx(it=99, epoch=9)) == pytest.approx(0.07)  # past the schedule's end


def test_distribution_health_extremes():
    k = 8
    uniform = distribution_health(torch.full((4, k), 1 / k))
    assert uniform["teacher_entropy"] == pytest.approx(math.log(k), rel=1e-5)
    assert uniform["kl_uniform"] == pytest.approx(0.0, abs=1e-5)
    onehot = distribution_health(torch.nn.functional.one_hot(torch.zeros(4, dtype=torch.long), k).float())
    assert onehot["teacher_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert onehot["kl_uniform"] == pytest.approx(math.log(k), rel=1e-5)


# -- head -----------------------------------------------------------------------------------------------


def test_head_shapes_and_weight_normalised_last_layer():
    head = DINOHead(12, 20, hidden_dim=16, bottleneck_dim=8)
    out = head(torch.randn(5, 12))
    assert out.shape == (5, 20)
    g = head.last_layer.parametrizations.weight.original0
    assert torch.all(g == 1) and not g.requires_grad
    # every prototype has unit norm and the input to it is L2-normalised: |logits| <= 1
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(20), atol=1e-5)
    assert out.abs().max() <= 1 + 1e-5
    free = DINOHead(12, 20, norm_last_layer=False, hidden_dim=16, bottleneck_dim=8)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    linear_layers = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear_layers] == [(12, 16), (16, 16), (16, 8)]
    assert any(
        isinstance(m, torch.nn.BatchNorm1d)
        for m in DINOHead(12, 20, use_bn=True, hidden_dim=16, bottleneck_dim=8).mlp
    )


# -- method -------------------------------------------------------------------------------------------


def test_defaults_follow_table_1_and_official_code():
    cfg = resolve_config("dino")
    assert cfg["backbone"] == "vit_tiny_patch16_224" and cfg["optimizer"] == "adamw"
    assert cfg["batch_size"] == 56 and cfg["lr"] == 5e-4 and cfg["lr_schedule"] == "cosine"
    assert cfg["lr_scaling"] == "linear256" and cfg["warmup_epochs"] == 10 and cfg["min_lr"] == 1e-6
    assert (cfg["weight_decay"], cfg["weight_decay_end"], cfg["clip_grad"]) == (0.04, 0.4, 3.0)
    assert cfg["out_dim"] == 65536 and cfg["student_temp"] == 0.1 and cfg["teacher_temp"] == 0.04
    assert cfg["global_crops_scale"] == [0.4, 1.0] and cfg["local_crops_scale"] == [0.05, 0.4]
    assert cfg["local_crops_number"] == 8 and cfg["local_crop_size"] == 96 and cfg["image_size"] == 224
    assert (
        cfg["momentum_teacher"] == 0.996 and cfg["center_momentum"] == 0.9 and cfg["freeze_last_layer"] == 1
    )
    assert cfg["drop_path_rate"] == 0.1 and cfg["norm_last_layer"] is True and cfg["use_bn_in_head"] is False


def test_teacher_is_a_separate_frozen_copy_without_drop_path():
    m = _method()
    s_params, t_params = dict(m.student.named_parameters()), dict(m.teacher.named_parameters())
    assert s_params.keys() == t_params.keys()
    for name, t in t_params.items():
        assert not t.requires_grad
        assert t.data_ptr() != s_params[name].data_ptr()
        assert torch.equal(t, s_params[name])
    student_dp = [mod.drop_prob for mod in m.student.modules() if type(mod).__name__ == "DropPath"]
    teacher_dp = [mod for mod in m.teacher.modules() if type(mod).__name__ == "DropPath"]
    assert student_dp and max(student_dp) == pytest.approx(0.1) and not teacher_dp
    trainable = {id(p) for g in m.param_groups() for p in g["params"]}
    assert not trainable & {id(p) for p in m.teacher.parameters()}
    assert id(m.student.head.last_layer.parametrizations.weight.original0) not in trainable  # g fixed
    assert m.frozen_prefixes() == ("teacher.",)


def test_teacher_changes_only_by_ema_with_the_given_momentum():
    m = _method()
    batch = _batch(m, n=2)
    opt = torch.optim.SGD([p for g in m.param_groups() for p in g["params"]], lr=0.5)
    before = {n: p.detach().clone() for n, p in m.teacher.named_parameters()}
    ctx = _ctx(epoch=1, momentum=0.9)
    loss, _ = m.training_step(batch, ctx)
    opt.zero_grad()
    loss.backward()
    m.before_optimizer_step(ctx)
    opt.step()
    for n, p in m.teacher.named_parameters():  # the optimiser did not touch the teacher
        assert torch.equal(p, before[n]), n
    student = dict(m.student.named_parameters())
    assert any(not torch.equal(student[n], before[n]) for n in before)
    m.after_optimizer_step(ctx)
    for n, p in m.teacher.named_parameters():
        assert torch.allclose(p, 0.9 * before[n] + 0.1 * student[n].detach(), atol=1e-6), n
    # validation: nothing changes, neither teacher nor centre
    centre = m.loss.center.clone()
    teacher_now = {n: p.detach().clone() for n, p in m.teacher.named_parameters()}
    with torch.no_grad():
        m.training_step(batch, _ctx(epoch=1, training=False))
    m.after_optimizer_step(_ctx(epoch=1, training=False, momentum=0.5))
    assert torch.equal(m.loss.center, centre)
    assert all(torch.equal(p, teacher_now[n]) for n, p in m.teacher.named_parameters())


def test_ema_update_formula():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0 = a.weight.detach().clone()
    ema_update(a, b, 0.7)
    assert torch.allclose(a.weight, 0.7 * t0 + 0.3 * b.weight)


def test_last_layer_gradients_cancelled_in_first_epoch_only():
    m = _method()
    batch = _batch(m, n=2)
    for epoch, expect_grad in ((0, False), (1, True)):
        m.zero_grad(set_to_none=True)
        loss, _ = m.training_step(batch, _ctx(epoch=epoch))
        loss.backward()
        m.before_optimizer_step(_ctx(epoch=epoch))
        v = m.student.head.last_layer.parametrizations.weight.original1
        assert (v.grad is not None) is expect_grad
        assert m.student.head.mlp[0].weight.grad is not None
        assert m.student.backbone.cls_token.grad is not None


def test_teacher_sees_only_global_crops_and_student_sees_all():
    m = _method(local_crops_number=3)
    seen = {"teacher": [], "student": []}
    m.teacher.backbone.register_forward_pre_hook(
        lambda mod, args: seen["teacher"].append(tuple(args[0].shape))
    )
    m.student.backbone.register_forward_pre_hook(
        lambda mod, args: seen["student"].append(tuple(args[0].shape))
    )
    m.training_step(_batch(m, n=2), _ctx())
    assert seen["teacher"] == [(4, 3, 32, 32)]  # both global views, batched together
    assert seen["student"] == [(4, 3, 32, 32), (6, 3, 16, 16)]


def test_student_output_is_view_major():
    m = _method().eval()
    crops = [torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32), torch.randn(2, 3, 16, 16)]
    with torch.no_grad():
        joint = m.student(crops)
        single = torch.cat([m.student.head(m.student.backbone(c)) for c in crops])
    assert torch.allclose(joint, single, atol=1e-5)


def test_tiny_training_run_loss_falls():
    m = _method(center_momentum=1.0)  # fixed centre and teacher (momentum 1): the target stays put
    batch = _batch(m)
    opt = torch.optim.AdamW([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(20):
        ctx = _ctx(it=it, epoch=1, momentum=1.0)
        loss, logs = m.training_step(batch, ctx)
        opt.zero_grad()
        loss.backward()
        m.before_optimizer_step(ctx)
        opt.step()
        m.after_optimizer_step(ctx)
        losses.append(loss.item())
        assert math.isfinite(logs["teacher_entropy"]) and math.isfinite(logs["kl_uniform"])
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_tiny_training_run_with_moving_teacher_learns():
    m = _method()
    batch = _batch(m)
    opt = torch.optim.AdamW([p for g in m.param_groups() for p in g["params"]], lr=1e-3)
    kls = []
    for it in range(15):
        ctx = _ctx(it=it, epoch=1, momentum=0.99)
        loss, logs = m.training_step(batch, ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_optimizer_step(ctx)
        kls.append(logs["kl_teacher_student"])
    assert np.mean(kls[-3:]) < 0.5 * kls[0]  # the student learns to match the (moving) teacher


def test_collapse_reason():
    m = _method()
    log_k = math.log(64)
    assert m.collapse_reason({"teacher_entropy": 1.0, "kl_uniform": 1.0, "kl_teacher_student": 0.5}) is None
    assert "uniform" in m.collapse_reason(
        {"teacher_entropy": log_k, "kl_uniform": 0.0, "kl_teacher_student": 0.0}
    )
    assert "dominates" in m.collapse_reason(
        {"teacher_entropy": 0.0, "kl_uniform": log_k, "kl_teacher_student": 0.0}
    )


def test_export_is_the_teacher_backbone_by_default_and_round_trips(tmp_path):
    m = _method()
    backbone, meta = m.export()
    assert backbone is m.teacher.backbone  # official evaluation: --checkpoint_key teacher
    assert (
        meta.timm_name == "vit_tiny_patch16_224"
        and meta.feature_rule == "cls4"
        and meta.extra["method"] == "dino"
        and meta.extra["export"] == "teacher"
    )
    assert meta.mean == (0.485, 0.456, 0.406)
    export_backbone(backbone, tmp_path, meta)
    loaded, meta2 = load_exported(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        assert torch.allclose(
            extract_features(loaded, x, "cls4"), extract_features(backbone, x, "cls4"), atol=1e-5
        )
    assert meta2.feature_rule == "cls4"


def test_export_student_on_request_and_teacher_differs_after_training():
    m = _method(export="student")
    assert m.export()[0] is m.student.backbone and m.export()[1].extra["export"] == "student"
    t = _method()
    opt = torch.optim.SGD([p for g in t.param_groups() for p in g["params"]], lr=0.1)
    loss, _ = t.training_step(_batch(t), _ctx())
    loss.backward()
    opt.step()
    t.after_optimizer_step(_ctx(momentum=0.5))
    exported = dict(t.export()[0].named_parameters())
    student = dict(t.student.backbone.named_parameters())
    teacher = dict(t.teacher.backbone.named_parameters())
    moved = [n for n in exported if not torch.equal(student[n], teacher[n])]
    assert moved  # after one step the two differ: the export must be the teacher's weights
    assert all(torch.equal(exported[n], teacher[n]) for n in moved)


def test_export_key_is_checked():
    with pytest.raises(UsageError, match="export"):
        _method(export="ema")


def test_cnn_backbone_works_and_exports_avgpool():
    m = _method(backbone="resnet18", local_crops_number=1)
    loss, _ = m.training_step(_batch(m, n=2), _ctx())
    loss.backward()
    assert math.isfinite(loss.item())
    assert m.export()[1].feature_rule == "avgpool"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(out_dim=0), "out_dim"),
        (dict(teacher_temp=-1), "teacher_temp"),
        (dict(global_crops_scale=[0.9, 0.1]), "global_crops_scale"),
        (dict(center_momentum=2), "center_momentum"),
        (dict(local_crops_number="many"), "local_crops_number"),
    ],
)
def test_bad_config_is_a_usage_error_naming_the_key(overrides, key):
    with pytest.raises(UsageError, match=key):
        _method(**overrides)


def test_cli_pretrain_runs_dino_end_to_end(tmp_path):
    from helpers_methods import make_corpus, make_images
    from typer.testing import CliRunner

    from dermctl.cli.app import app

    root = tmp_path / "ws"
    (root / "manifests").mkdir(parents=True)
    man = make_corpus(tmp_path / "corpus.csv", make_images(tmp_path / "img", 8, size=40))
    sets = [
        f"{k}={v}" for k, v in {**TINY, "num_workers": 0, "warmup_epochs": 0}.items() if k != "batch_size"
    ]
    args = ["-C", str(root), "--json", "pretrain", "--method", "dino", "--data", str(man), "--epochs", "2"]
    args += ["--device", "cpu", "--batch-size", "3"] + [a for s in sets for a in ("--set", s)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["status"] == "finished" and out["epochs_run"] == 2
    model, meta = load_exported(out["backbone"])
    assert meta.feature_rule == "cls4" and meta.extra["method"] == "dino"
    header = (root / "runs" / out["name"] / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"teacher_temp", "teacher_entropy", "kl_uniform", "kl_teacher_student"} <= set(header)


def test_loss_refuses_inconsistent_view_layout_and_keeps_float64():
    loss_fn = DINOLoss(4)
    with pytest.raises(ValueError, match="n_global"):
        loss_fn(torch.randn(6, 4), torch.randn(5, 4), teacher_temp=0.04)  # 5 teacher rows, 2 global views
    with pytest.raises(ValueError, match="multiple"):
        loss_fn(torch.randn(7, 4), torch.randn(4, 4), teacher_temp=0.04)
    with pytest.raises(TypeError):
        DINOLoss(4, 10, 0.04)  # everything after out_dim is keyword-only: no silent positional mix-ups
    s, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    assert DINOLoss(4)(s, t, teacher_temp=0.04, update_center=False).dtype == torch.float64
