"""Data-parallel training under torchrun: who this process is, and the few collective operations the
engine needs. A single process is the default (`Dist()`): every call is then a no-op.

Gradients are averaged with an all-reduce after `backward()` instead of wrapping the method in DDP,
because a method's `training_step` is not a `forward()` and may touch several sub-modules (student,
heads, teacher); averaging gradients gives the same update as DDP without that coupling.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from dermctl.errors import UsageError


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
            torch.distributed.barrier()

    def all_reduce_mean(self, value: float, device: torch.device) -> float:
        """Mean of a number over all processes (losses for logs)."""
        if not self.enabled:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.world_size)

    def shard(self, order: list[int]) -> list[int]:
        """This rank's share of an epoch's (identically seeded) order, padded to equal length as
        DistributedSampler does so that every rank runs the same number of steps."""
        if not self.enabled:
            return order
        per = -(-len(order) // self.world_size)
        padded = order + order[: per * self.world_size - len(order)]
        return padded[self.rank :: self.world_size]


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
    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world_size=world, local_rank=local)
