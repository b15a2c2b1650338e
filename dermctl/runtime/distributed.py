"""Data-parallel training under torchrun: who this process is, the collectives the engine needs, batch
sizes across processes, and synchronised BatchNorm. A single process is the default (`Dist()`): every
call is then a no-op.

The trainable module is wrapped in `torch.nn.parallel.DistributedDataParallel` (see `wrap_ddp`): DDP
averages gradients during backward. SimCLR gathers negatives from every rank with gradients and DINO/iBOT
all-reduce their centres inside the methods. BatchNorm is synchronised where the papers do it (SimCLR's
"global BN", BYOL's synchronised BN) via `convert_sync_batchnorm`, which also works on CPU with gloo
(torch's own `SyncBatchNorm` only runs on accelerators).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from dermctl.errors import UsageError

DEBUG_HASH_ENV = "DERMCTL_DEBUG_STATE_HASH_DIR"
SYNC_BN_METHODS = ("simclr", "byol", "colorme")  # `sync_bn = "auto"`: papers / authors' code sync BN
_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_reduce_mean(self, value: float, device: torch.device) -> float:
        """Mean of a number over all processes (losses for logs)."""
        if not self.enabled:
            return float(value)
        return self.all_reduce_sum([value], device)[0] / self.world_size

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums of numbers over all processes (in float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        tdist.all_reduce(t)
        return [float(v) for v in t.tolist()]

    def shard(self, order: list[int]) -> list[int]:
        """This rank's share of an epoch's (identically seeded) order, padded to equal length as
        DistributedSampler does so that every rank runs the same number of steps. Cut into per-rank
        batches of `b`, the ranks' b-th batches together hold exactly the b-th global batch
        `order[b*B:(b+1)*B]` (B = b x world size) of a single process."""
        if not self.enabled:
            return order
        per = -(-len(order) // self.world_size)
        padded = order + (order * self.world_size)[: per * self.world_size - len(order)]
        return padded[self.rank :: self.world_size]


def end_process_group() -> int | None:
    """Tear down the process group torchrun's job started; returns this process's rank (None when
    there is no group). All ranks meet at a barrier first: gloo torn down while a peer still has
    collectives in flight aborted the process (SIGABRT) after its work was done."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return None
    rank = tdist.get_rank()
    tdist.barrier()
    tdist.destroy_process_group()
    return rank


def dist_from_env(device: str) -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group (nccl on CUDA, gloo on
    CPU). Without them: a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise UsageError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing (start with torchrun)") from exc
    if not tdist.is_initialized():
        cuda = (device == "auto" or device.startswith("cuda")) and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        tdist.init_process_group(backend="nccl" if cuda else "gloo")
    return Dist(rank=rank, world_size=world, local_rank=local)


def per_process_batch(cfg: dict[str, Any], world_size: int) -> int:
    """The batch size of one process. `batch_size` is per process (global = batch_size x world size);
    `global_batch`, when set, fixes the global batch instead and must be divisible by the world size."""
    gb = cfg.get("global_batch")
    if gb is None:
        return int(cfg["batch_size"])
    if isinstance(gb, bool) or not isinstance(gb, int) or gb < 1:
        raise UsageError(f"config key 'global_batch' = {gb!r}: expected an integer >= 1 (or unset)")
    if gb % world_size:
        raise UsageError(
            f"config key 'global_batch' = {gb}: not divisible by the world size {world_size} "
            "(every process needs the same batch size)"
        )
    return gb // world_size


def use_sync_bn(cfg: dict[str, Any]) -> bool:
    """`sync_bn`: true / false, or "auto" = true for the methods whose papers synchronise BN."""
    value = cfg.get("sync_bn", "auto")
    if value == "auto":
        return str(cfg.get("method", "")) in SYNC_BN_METHODS
    if isinstance(value, bool):
        return value
    raise UsageError(f"config key 'sync_bn' = {value!r}: expected true, false or \"auto\"")


def _all_reduce_with_grad(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes; the backward pass sums the gradients of every process's use of the result."""
    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():  # deprecated in favour of funcol, whose all_reduce has no backward
        warnings.simplefilter("ignore", FutureWarning)
        return all_reduce(t)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Synchronised BatchNorm for CPU processes (gloo): batch mean and variance over every process's batch,
    with gradients flowing back to every process. torch's `nn.SyncBatchNorm` runs on GPUs only (and DDP
    refuses it on CPU); it is used on CUDA. The state dict is that of a plain BatchNorm, so checkpoints
    load at any world size."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002  (torch's signature)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (torch's signature)
        sync = self.training and tdist.is_available() and tdist.is_initialized()
        if not sync or tdist.get_world_size() == 1:
            return super().forward(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        # Two passes (mean, then centred squares) are more accurate than E[x^2] - E[x]^2.
        sums = _all_reduce_with_grad(torch.cat([x.sum(dims), count]))
        n = sums[c]
        mean = sums[:c] / n
        centred = x - mean.view(shape)
        var = _all_reduce_with_grad((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                nf = float(n)
                unbiased = var.detach() * (nf / (nf - 1) if nf > 1 else 1.0)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every plain BatchNorm1d/2d/3d (in place) by a synchronised one (`nn.SyncBatchNorm` on CUDA,
    `CPUSyncBatchNorm` elsewhere), keeping its parameters (the same Parameter objects, so requires_grad
    is kept) and buffers. Subclasses (e.g. timm's BatchNormAct2d) are left alone: converting them would
    drop their fused activation."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm
    for name, child in list(module.named_children()):
        if type(child) in _PLAIN_BN:
            bn = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                bn.weight, bn.bias = child.weight, child.bias
            if child.track_running_stats:
                bn.running_mean, bn.running_var = child.running_mean, child.running_var
                bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            convert_sync_batchnorm(child, device)
    return module


def wrap_ddp(module: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """`module` itself in a single process, else DistributedDataParallel around it. Parameters without
    requires_grad (EMA teachers / targets) are ignored by DDP. State is always saved from the unwrapped
    module, so checkpoints carry no `module.` prefix and load at any world size."""
    if not dist.enabled:
        return module
    ids = [device.index if device.index is not None else dist.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def state_hash(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes, bytes), to compare processes."""
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dump_state_hash(module: nn.Module, dist: Dist, extra: dict[str, Any] | None = None) -> Path | None:
    """Debug aid for tests: when $DERMCTL_DEBUG_STATE_HASH_DIR is set, every rank writes
    `rank<r>.json` with the hash of its state there (ranks must end identical)."""
    folder = os.environ.get(DEBUG_HASH_ENV)
    if not folder:
        return None
    from dermctl.workspace import atomic_write_json

    path = Path(folder) / f"rank{dist.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"rank": dist.rank, "world_size": dist.world_size, "sha256": state_hash(module)}
    atomic_write_json(path, payload | (extra or {}))
    return path


def gather_rows(rows: torch.Tensor, dist: Dist, counts: list[int]) -> torch.Tensor | None:
    """Rank 0 receives every rank's (counts[r], ...) rows concatenated in rank order; others get None.
    Rows are padded to the largest count for the collective (gloo and nccl need equal shapes)."""
    if not dist.enabled:
        return rows
    most = max(counts)
    pad = torch.zeros((most, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    pad[: rows.shape[0]] = rows
    parts = [torch.empty_like(pad) for _ in range(dist.world_size)] if dist.is_main else None
    tdist.gather(pad, parts, dst=0)
    if not dist.is_main or parts is None:
        return None
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])


def contiguous_shard(n: int, dist: Dist) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n items (sizes differ by at most one)."""
    base, extra = divmod(n, dist.world_size)
    start = dist.rank * base + min(dist.rank, extra)
    return start, start + base + (1 if dist.rank < extra else 0)


def shard_counts(n: int, world_size: int) -> list[int]:
    """How many of n items each rank holds under `contiguous_shard`."""
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]
