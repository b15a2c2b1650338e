"""SimCLR: NT-Xent against hand and loop computations, views, head, training, export, distributed gather."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.errors import UsageError
from dermctl.methods import StepContext, get_method, resolve_config
from dermctl.methods.simclr import NTXentLoss, SimCLRProjectionHead, l2_normalized_std, nt_xent_loss
from dermctl.models.backbone import export_backbone, extract_features, load_exported

TINY = dict(backbone="resnet18", init="random", image_size=32, proj_hidden_dim=32, proj_out_dim=16)


def _images(n: int = 4, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def _loop_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """Straightforward eq. 1 of Chen et al.: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / (2 * n)


def test_nt_xent_hand_computation_two_samples_two_views() -> None:
    # Views (rows): a1, b1 (view 1 of images a, b), a2, b2 (view 2), already unit length.
    a1, b1, a2, b2 = (1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (0.8, -0.6)
    # Cosine similarity matrix, order a1 b1 a2 b2:
    #        a1    b1    a2    b2
    # a1     1     0     0.6   0.8
    # b1     0     1     0.8  -0.6
    # a2     0.6   0.8   1     0
    # b2     0.8  -0.6   0     1
    t = 0.5
    e = lambda s: math.exp(s / t)  # noqa: E731
    # -log softmax of the positive over the 3 other entries of each row:
    l_a1 = -math.log(e(0.6) / (e(0.0) + e(0.6) + e(0.8)))
    l_b1 = -math.log(e(-0.6) / (e(0.0) + e(0.8) + e(-0.6)))
    l_a2 = -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.0)))
    l_b2 = -math.log(e(-0.6) / (e(0.8) + e(-0.6) + e(0.0)))
    expected = (l_a1 + l_b1 + l_a2 + l_b2) / 4
    # Scaled inputs: the loss normalises them itself.
    z1 = torch.tensor([a1, b1]) * 3.0
    z2 = torch.tensor([a2, b2]) * 0.5
    assert nt_xent_loss(z1, z2, temperature=t).item() == pytest.approx(expected, abs=1e-5)
    assert NTXentLoss(temperature=t)(z1, z2).item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("n,d,t", [(3, 5, 0.1), (6, 16, 0.5), (5, 8, 1.0)])
def test_nt_xent_matches_loop_implementation(n: int, d: int, t: float) -> None:
    g = torch.Generator().manual_seed(n * d)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert nt_xent_loss(z1, z2, temperature=t).item() == pytest.approx(_loop_nt_xent(z1, z2, t), rel=1e-5)


def test_nt_xent_symmetric_in_views_and_has_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(4, 8, generator=g, requires_grad=True)
    z2 = torch.randn(4, 8, generator=g, requires_grad=True)
    loss = nt_xent_loss(z1, z2, 0.2)
    assert loss.item() == pytest.approx(nt_xent_loss(z2, z1, 0.2).item(), rel=1e-6)
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_temperature_effect() -> None:
    # Positives aligned and negatives orthogonal: l = -log(e^{1/t} / (e^{1/t} + 2N-2)) per anchor.
    z = torch.eye(4)
    for t in (0.1, 0.5, 1.0):
        expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 6))
        assert nt_xent_loss(z, z, t).item() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # Sharper temperature rewards well-separated views more.
    assert nt_xent_loss(z, z, 0.1) < nt_xent_loss(z, z, 0.5) < nt_xent_loss(z, z, 1.0)
    with pytest.raises(ValueError):
        NTXentLoss(temperature=0.0)
    with pytest.raises(UsageError, match="temperature"):
        get_method("simclr")(resolve_config("simclr", dict(TINY, temperature=-1)))


def test_defaults_follow_table_1_and_paper() -> None:
    cfg = resolve_config("simclr")
    assert (cfg["optimizer"], cfg["batch_size"], cfg["lr"], cfg["lr_schedule"]) == (
        "adam",
        160,
        3e-5,
        "cosine",
    )
    assert cfg["backbone"] == "resnet50.tv_in1k" and cfg["temperature"] == 0.1
    assert (cfg["proj_hidden_dim"], cfg["proj_out_dim"]) == (2048, 128)
    assert cfg["method"] == "simclr"
    # the study authors' code: ImageNet init, lr x batch / 256 with the cosine schedule, blur always
    assert cfg["init"] == "imagenet" and cfg["lr_scaling"] == "linear256" and cfg["blur_p"] == 1.0


def test_projection_head_is_the_official_one_layer_by_layer() -> None:
    head = SimCLRProjectionHead(2048)
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    dims = [(m.in_features, m.out_features) for m in head if isinstance(m, torch.nn.Linear)]
    assert dims == [(2048, 2048), (2048, 128)]
    assert all(m.bias is None for m in head if isinstance(m, torch.nn.Linear))  # BN follows each
    final = head[-1]
    # TF BatchNormalization(center=False): a learned scale, the shift frozen at zero
    assert final.weight.requires_grad and not final.bias.requires_grad and not final.bias.any()
    head.train()
    z = head(torch.randn(16, 2048))
    assert z.shape == (16, 128)
    # batch statistics: each output dimension has mean 0 and variance 1 over the batch
    assert torch.allclose(z.mean(0), torch.zeros(128), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(128), atol=1e-3)
    old = SimCLRProjectionHead(2048, final_bn=False)  # 0.1.0's head, for comparison
    assert [type(m).__name__ for m in old] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]


def test_frozen_bn_shift_is_never_given_to_the_optimiser() -> None:
    method = get_method("simclr")(resolve_config("simclr", TINY))
    trainable = {id(p) for g in method.param_groups() for p in g["params"]}
    assert id(method.projection_head[-1].bias) not in trainable
    assert id(method.projection_head[-1].weight) in trainable


def test_transform_two_different_views() -> None:
    method = get_method("simclr")(resolve_config("simclr", TINY))
    out = method.transform(True)(_images(1)[0])
    v1, v2 = out["views"]
    assert v1.shape == v2.shape == (3, 32, 32)
    assert not torch.equal(v1, v2)
    batch = default_collate([out, out])
    assert isinstance(batch["views"], list) and batch["views"][0].shape == (2, 3, 32, 32)


def test_feature_std_and_collapse_reason() -> None:
    z = torch.randn(512, 64)
    assert l2_normalized_std(z).item() == pytest.approx(1 / math.sqrt(64), rel=0.1)
    assert l2_normalized_std(torch.ones(8, 64)).item() == pytest.approx(0.0, abs=1e-6)
    method = get_method("simclr")(resolve_config("simclr", TINY))
    assert method.collapse_reason({"feature_std": 1 / math.sqrt(16)}) is None
    reason = method.collapse_reason({"feature_std": 1e-4})
    assert reason is not None and "feature_std" in reason


def test_tiny_training_lowers_loss_and_exports_plain_timm(tmp_path) -> None:
    torch.manual_seed(0)
    method = get_method("simclr")(resolve_config("simclr", TINY))
    tf = method.transform(True)
    batch = default_collate([tf(im) for im in _images(4)])
    opt = torch.optim.Adam([p for g in method.param_groups() for p in g["params"]], lr=1e-3)
    losses = []
    for it in range(20):
        ctx = StepContext(it=it, epoch=0, training=True)
        loss, logs = method.training_step(batch, ctx)
        assert set(logs) == {"feature_std"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    backbone, meta = method.export()
    assert (meta.timm_name, meta.feature_rule, meta.in_chans, meta.channels) == (
        "resnet18",
        "avgpool",
        3,
        "rgb",
    )
    assert meta.extra["method"] == "simclr" and meta.input_size == 32
    assert set(backbone.state_dict()) == set(timm.create_model("resnet18", num_classes=0).state_dict())
    export_backbone(backbone, tmp_path, meta)
    loaded, meta2 = load_exported(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()
    assert torch.allclose(
        extract_features(loaded.eval(), x, "avgpool"), extract_features(backbone, x, "avgpool")
    )
    assert meta2.extra["method"] == "simclr"


def _dist_worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = z1.shape[0] // world
        a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = nt_xent_loss(a, b, 0.3)
        loss.backward()
        out[rank] = (loss.item(), a.grad.clone(), b.grad.clone())
    finally:
        dist.destroy_process_group()


def test_distributed_gather_equals_global_batch() -> None:
    """Two gloo ranks with half the batch each: the mean of their losses is the single-process loss of the
    full batch, and the gradients (summed over ranks by DDP's averaging x world) match."""
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_dist_worker, args=(2, port, z1, z2, out), nprocs=2, join=True)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent_loss(a, b, 0.3)
    ref.backward()
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(ref.item(), rel=1e-5)
    # DDP averages gradients over ranks; each rank's loss is a mean over its own anchors, so the
    # averaged gradient w.r.t. a sample equals the gradient of the global mean loss.
    grad_a = torch.cat([out[0][1], out[1][1]]) / 2
    grad_b = torch.cat([out[0][2], out[1][2]]) / 2
    assert torch.allclose(grad_a, a.grad, atol=1e-6) and torch.allclose(grad_b, b.grad, atol=1e-6)


def test_feature_std_undefined_for_one_sample() -> None:
    assert math.isnan(l2_normalized_std(torch.randn(1, 8)).item())
