"""Signs of representation collapse that the CNN methods log and check each epoch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

COLLAPSE_STD_FRACTION = 0.1  # collapse: feature std below this fraction of the healthy 1/sqrt(d)


def l2_normalized_std(z: torch.Tensor) -> torch.Tensor:
    """Std over the batch of L2-normalised features, averaged over dimensions (Grill et al. 2020 /
    lightly's collapse monitor): about 1/sqrt(d) for well-spread features, about 0 after collapse."""
    if z.shape[0] < 2:  # undefined for one sample
        return torch.tensor(float("nan"), device=z.device)
    z = F.normalize(z.detach().float(), dim=1)
    return z.std(dim=0).mean()


def std_collapse_reason(epoch_logs: dict[str, float], dim: int) -> str | None:
    """A reason when the epoch's mean `feature_std` of `dim`-dimensional features shows collapse."""
    std = epoch_logs.get("feature_std")
    healthy = 1.0 / math.sqrt(dim)
    if std is not None and std < COLLAPSE_STD_FRACTION * healthy:
        return f"feature_std {std:.4g} is below {COLLAPSE_STD_FRACTION:g} x 1/sqrt({dim}) = {COLLAPSE_STD_FRACTION * healthy:.4g}: embeddings collapsed"
    return None
