"""dermctl.runtime.device: one device, precision and worker rule for every command."""

from __future__ import annotations

import pytest
import torch

import dermctl.runtime.device as device_mod
from dermctl.errors import UnavailableError, UsageError
from dermctl.runtime.device import (
    compute_device,
    computing_on,
    resolve_device,
    resolve_num_workers,
    resolve_precision,
)


def test_device_values_every_command_accepts(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for bad in ("gpu", "tpu", "cuda:x", ""):
        with pytest.raises(UsageError, match="--device"):
            resolve_device(bad)
    for absent in ("cuda", "cuda:1"):
        with pytest.raises(UnavailableError, match="no CUDA GPU"):
            resolve_device(absent)


def test_under_torchrun_each_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("auto", local_rank=3) == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # one process: the GPU asked for
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        resolve_device("cuda:1", local_rank=0)
    with pytest.raises(UnavailableError, match="4 CUDA GPU"):
        resolve_device("cuda:7")
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")


def test_precision():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (None, False)
    assert resolve_precision("fp32", cpu) == (None, False)
    assert resolve_precision("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(UsageError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(UsageError, match="--precision"):
        resolve_precision("int8", cpu)


def test_worker_count_from_the_cores(monkeypatch):
    monkeypatch.setattr(device_mod, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_num_workers(3) == 3 and resolve_num_workers(0) == 0
    assert resolve_num_workers(-1) == 15
    assert resolve_num_workers(-1, local_processes=4) == 3
    assert resolve_num_workers(-1, items=100) == 0  # a one-pass job this small starts no processes
    assert resolve_num_workers(2, items=100) == 2  # an explicit count is kept
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_num_workers(-1) == 1
    monkeypatch.setattr(device_mod, "available_cores", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_num_workers(-1) == device_mod.MAX_WORKERS
    monkeypatch.setattr(device_mod, "available_cores", lambda: 1)
    assert resolve_num_workers(-1) == 0


def test_compute_device_is_the_one_set_around_a_command(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute_device() == torch.device("cuda")  # auto, outside any command
    with computing_on(torch.device("cpu")):
        assert compute_device() == torch.device("cpu")
        with computing_on(torch.device("cuda", 1)):
            assert compute_device() == torch.device("cuda", 1)
        assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")
