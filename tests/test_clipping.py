from __future__ import annotations

import pytest
import torch

from dermctl.train.clipping import clip_gradients


def _params(*grads):
    out = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros_like(g))
        p.grad = g.clone()
        out.append(p)
    return out


def test_per_param_clips_each_gradient_to_its_own_norm():
    big, small = torch.tensor([30.0, 40.0]), torch.tensor([0.3, 0.4])  # norms 50 and 0.5
    a, b = _params(big, small)
    clip_gradients([a, b], 3.0, "per_param")
    assert a.grad.norm().item() == pytest.approx(
        3.0, rel=1e-5
    )  # DINO's utils.clip_gradients: 3 / (50 + 1e-6)
    assert torch.equal(b.grad, small)  # under the limit: untouched


def test_global_clips_the_joint_norm():
    a, b = _params(torch.tensor([30.0, 40.0]), torch.tensor([0.3, 0.4]))
    clip_gradients([a, b], 3.0, "global")
    joint = torch.cat([a.grad, b.grad]).norm().item()
    assert joint == pytest.approx(3.0, rel=1e-4)
    assert b.grad.norm().item() < 0.5  # the small gradient shrinks too


def test_off_and_unknown_mode():
    (a,) = _params(torch.tensor([30.0, 40.0]))
    clip_gradients([a], 0.0, "per_param")
    assert a.grad.norm().item() == pytest.approx(50.0)
    with pytest.raises(ValueError, match="clip_mode"):
        clip_gradients([a], 1.0, "layerwise")
