"""Gradient clipping, in the two forms the methods' original code uses."""

from __future__ import annotations

from collections.abc import Iterable

import torch

CLIP_MODES = ("global", "per_param")


@torch.no_grad()
def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float, mode: str = "global") -> None:
    """Clip gradients in place; `max_norm <= 0` does nothing.

    global     one norm over all gradients (torch.nn.utils.clip_grad_norm_), the usual choice.
    per_param  each parameter's gradient on its own: g *= max_norm / (||g|| + 1e-6) when that is < 1, as the
               official DINO and iBOT code (`utils.clip_gradients`) does with clip_grad 3.0.
    """
    if max_norm <= 0:
        return
    grads = [p for p in params if p.grad is not None]
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(grads, max_norm)
    elif mode == "per_param":
        for p in grads:
            coef = max_norm / (p.grad.detach().norm(2) + 1e-6)
            p.grad.mul_(torch.clamp(coef, max=1.0))
    else:
        raise ValueError(f"clip_mode must be one of {', '.join(CLIP_MODES)}, got {mode!r}")
