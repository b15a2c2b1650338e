"""dermctl.runtime.checkpoint: hashed, weights-only checkpoints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from dermctl.errors import DataError
from dermctl.provenance import sha256_file
from dermctl.runtime.checkpoint import check_plain, load_checkpoint, save_checkpoint, sidecar_path


def _state():
    return {
        "model": {"w": torch.arange(6.0).reshape(2, 3)},
        "epoch": 3,
        "rng": [3, [1, 2], None],
        "name": "x",
        "f": 0.5,
    }


def test_round_trip_and_sidecar(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c" / "last.pt")
    side = sidecar_path(p)
    assert side.read_text().split()[0] == sha256_file(p)
    back = load_checkpoint(p)
    assert torch.equal(back["model"]["w"], _state()["model"]["w"])
    assert back["epoch"] == 3 and back["rng"] == [3, [1, 2], None]
    assert not [q for q in p.parent.iterdir() if q.name.endswith(".tmp")]


def test_copies_share_bytes_and_hash_and_survive_the_next_save(tmp_path):
    """best.pt is written once with last.pt (no second serialisation); replacing last.pt later leaves it."""
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    save_checkpoint(_state(), last, [best])
    assert sidecar_path(best).read_text().split() == [sha256_file(best), "best.pt"]
    assert sha256_file(best) == sha256_file(last)
    assert os.stat(best).st_ino == os.stat(last).st_ino  # a hard link here, not a second write
    newer = _state() | {"epoch": 4}
    save_checkpoint(newer, last)
    assert load_checkpoint(best)["epoch"] == 3 and load_checkpoint(last)["epoch"] == 4
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_altered_and_truncated_files_are_named(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "last.pt")
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match="last.pt.*altered"):
        load_checkpoint(p)
    p.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(DataError, match="last.pt"):
        load_checkpoint(p)


def test_missing_sidecar_or_file(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "last.pt")
    sidecar_path(p).unlink()
    with pytest.raises(DataError, match="hash"):
        load_checkpoint(p)
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": _Evil(str(marker))}, p)
    # A matching hash must not help: the hash proves integrity, not safety.
    sidecar_path(p).write_text(f"{sha256_file(p)}  evil.pt\n")
    with pytest.raises(DataError, match="evil.pt.*pickle"):
        load_checkpoint(p)
    assert not marker.exists()


def test_only_plain_containers_are_saved(tmp_path):
    with pytest.raises(TypeError, match="numpy"):
        save_checkpoint({"a": np.zeros(3)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    check_plain({"a": [torch.zeros(1), (1, 2.0, "s", None, True)]})


def test_full_disk_during_save_names_the_file_and_keeps_the_old_pair(tmp_path, monkeypatch):
    import builtins
    import errno

    from dermctl.errors import DiskFullError
    from dermctl.runtime import checkpoint as ckpt_mod

    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.zeros(3)}, path)

    class FullDisk:  # a file whose writes fail past 100 bytes, as torch.save meets ENOSPC
        def __init__(self, name, mode="r", *a, **kw):
            self.fh = builtins.open(name, mode, *a, **kw)
            self.n = 0

        def write(self, data):
            self.n += len(data)
            if self.n > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(ckpt_mod, "open", FullDisk, raising=False)
    with pytest.raises(DiskFullError) as err:
        save_checkpoint({"w": torch.ones(10_000)}, path)
    assert str(path) in err.value.message and "\n" not in err.value.message
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["w"], torch.zeros(3))  # the old pair still verifies
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]


def test_background_writer_saves_the_state_as_it_was_at_submit(tmp_path):
    from dermctl.runtime.checkpoint import CheckpointWriter

    w = torch.ones(1000)
    state = {"model": {"w": w}, "history": [{"epoch": 1}]}
    writer = CheckpointWriter()
    writer.submit(state, tmp_path / "last.pt", [tmp_path / "best.pt"])
    w.add_(1.0)  # training goes on: the next step changes the weights in place
    state["history"].append({"epoch": 2})
    writer.wait()
    for name in ("last.pt", "best.pt"):
        saved = load_checkpoint(tmp_path / name)  # hash-verified
        assert torch.equal(saved["model"]["w"], torch.ones(1000)) and saved["history"] == [{"epoch": 1}]
    writer.submit({"model": {"w": w}}, tmp_path / "last.pt")
    writer.submit({"model": {"w": w * 3}}, tmp_path / "last.pt")  # waits for the first: files in order
    writer.wait()
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["model"]["w"], torch.full((1000,), 6.0))
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.ones(1000))


def test_background_write_error_reaches_the_training_thread(tmp_path, monkeypatch):
    import dermctl.runtime.checkpoint as ckpt_mod
    from dermctl.errors import DiskFullError

    def full(*args, **kwargs):
        raise DiskFullError(f"{tmp_path / 'last.pt'}: no space left on the device")

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", full)
    writer = ckpt_mod.CheckpointWriter()
    writer.submit({"x": torch.zeros(2)}, tmp_path / "last.pt")
    with pytest.raises(DiskFullError, match="last.pt"):
        writer.wait()
    writer.wait()  # told once
    with pytest.raises(TypeError):  # a value that is no plain container fails in the caller's thread
        writer.submit({"x": object()}, tmp_path / "last.pt")
