"""A rank of the 2-process CPUSyncBatchNorm check (kept apart from the test module so that spawned
processes import only torch and dermctl.runtime.distributed)."""

from __future__ import annotations

import torch

from dermctl.runtime.distributed import CPUSyncBatchNorm


def sync_bn_rank(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    w = torch.randn(8, 3, 4, 4)
    bn = CPUSyncBatchNorm(3)
    xs = x[rank * 4 : (rank + 1) * 4].clone().requires_grad_(True)
    # the per-rank loss is a mean over its own half; DDP would average the ranks' parameter grads
    loss = (bn(xs) * w[rank * 4 : (rank + 1) * 4]).sum() / 4
    loss.backward()
    torch.save({"gx": xs.grad, "gw": bn.weight.grad, "rv": bn.running_var.clone()}, f"{out}/r{rank}.pt")
    torch.distributed.barrier()  # every rank done with its collectives before gloo is torn down
    torch.distributed.destroy_process_group()
