"""Where a command computes: the device (`--device`), the precision of training, and how many loader
processes it starts (`--workers`). Every command resolves these here, so they accept the same values."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch

from dermctl.errors import UnavailableError, UsageError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MAX_WORKERS = 16  # loader processes per training / embedding process
SMALL_JOB = 256  # items below which a one-pass job (embedding) is not worth starting processes for


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`. Under torchrun (`local_rank`
    given) `auto`/`cuda` mean this process's own GPU, and a fixed `cuda:N` is refused: every process would
    share one GPU. CUDA asked for without one is an UnavailableError."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device: {device!r} is not one of auto, cpu, cuda, cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: {device!r} is not one of auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and dev.index is not None and local_rank is not None:
        raise UsageError(
            f"--device {device}: under torchrun every process takes its LOCAL_RANK's GPU; use --device cuda"
        )
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    if dev.type == "cuda" and local_rank is not None:
        dev = torch.device("cuda", local_rank)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UnavailableError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


# The device of frozen-feature evaluation (knn, probe): set by `computing_on` around a command, read deep
# in the rules (the probe's L-BFGS, the kNN similarity matrix, the FAISS index) without a parameter on
# every function in between.
_COMPUTE_DEVICE: ContextVar[torch.device | None] = ContextVar("dermctl_compute_device", default=None)


@contextlib.contextmanager
def computing_on(device: torch.device) -> Iterator[torch.device]:
    """Inside the block, `compute_device()` is `device`."""
    token = _COMPUTE_DEVICE.set(device)
    try:
        yield device
    finally:
        _COMPUTE_DEVICE.reset(token)


def compute_device() -> torch.device:
    """The device set by `computing_on`; outside one, CUDA when present, else the CPU (`--device auto`)."""
    dev = _COMPUTE_DEVICE.get()
    if dev is not None:
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def enable_tf32() -> None:
    """TF32 for the fp32 matmuls and convolutions left outside bf16 autocast (as the official DINO code
    trains); evaluation keeps full fp32."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler). auto = bf16 on CUDA (fp16 where bf16 is missing),
    fp32 on the CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        if device.type != "cuda":
            raise UsageError("--precision fp16: needs a CUDA device (use bf16 or fp32 on the CPU)")
        return torch.float16, True
    raise UsageError(f"--precision: {precision!r} is not one of {', '.join(PRECISIONS)}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """torch.autocast for `dtype` on `device`, or nothing for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_num_workers(
    num_workers: int, local_processes: int | None = None, items: int | None = None
) -> int:
    """-1: the cores available to this process's share of the machine, less one for the process itself,
    at most MAX_WORKERS; none for a one-pass job over fewer than SMALL_JOB `items`. `local_processes`
    (default: torchrun's LOCAL_WORLD_SIZE, else 1) processes on this machine share the cores."""
    if num_workers >= 0:
        return num_workers
    if items is not None and items < SMALL_JOB:
        return 0
    if local_processes is None:
        try:
            local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            local_processes = 1
    return max(0, min(MAX_WORKERS, available_cores() // local_processes - 1))
