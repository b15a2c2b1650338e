"""Decode cache (dermctl.data.cache) and the loader settings around it (dermctl.train.data): the cache is
used (originals decoded once), rebuilt when the manifest changes, equal to the originals up to the
documented resize, written atomically; persistent loaders; worker count from the cores."""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest
import torch
from helpers_methods import make_corpus, make_images
from PIL import Image
from torchvision import transforms as T

import dermctl.data.cache as cache_mod
import dermctl.train.data as data_mod
from dermctl.data.cache import DecodeCache, resize_shorter, resized_size
from dermctl.data.images import open_rgb
from dermctl.errors import DataError, DiskFullError, UsageError
from dermctl.methods.registry import resolve_config
from dermctl.methods.simclr import SimCLR
from dermctl.train.data import (
    ImageDataset,
    close_loaders,
    decode_cache_for,
    epoch_batches,
    epoch_order,
    load_pretrain_data,
    make_loader,
    pretrain_datasets,
)
from dermctl.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    w = Workspace.at(tmp_path / "ws")
    w.ensure()
    return w


def _jpegs(folder, n: int, size=(120, 90), seed: int = 0) -> list:
    """Smooth colour photos saved as JPEG (like dermoscopy images, 4:3, larger than the cache size)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        p = folder / f"photo{i:02d}.jpg"
        small.resize(size, Image.BICUBIC).save(p, quality=90)
        out.append(p)
    return out


class _Counter:
    """Counts decodes of originals by the cache; the uncached path must not decode at all."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, path):
        self.calls.append(str(path))
        return open_rgb(path)


@pytest.fixture
def decodes(monkeypatch):
    counter = _Counter()
    monkeypatch.setattr(cache_mod, "open_rgb", counter)

    def forbidden(path):
        raise AssertionError(f"original decoded outside the cache: {path}")

    monkeypatch.setattr(data_mod, "open_rgb", forbidden)
    return counter


def test_resize_rule_matches_torchvision_resize_and_never_upscales(tmp_path):
    assert resized_size(600, 450, 256) == (341, 256) and resized_size(450, 600, 256) == (256, 341)
    assert resized_size(200, 150, 256) == (200, 150) and resized_size(256, 300, 256) == (256, 300)
    img = open_rgb(_jpegs(tmp_path, 1, size=(600, 450))[0])
    ref = T.Resize(256, interpolation=T.InterpolationMode.BICUBIC)(img)
    assert np.array_equal(np.asarray(resize_shorter(img, 256)), np.asarray(ref))


def test_entries_equal_the_resized_originals(tmp_path, decodes):
    paths = _jpegs(tmp_path / "img", 3, size=(120, 90)) + make_images(tmp_path / "png", 2, size=24)
    cache = DecodeCache(tmp_path / "cache", size=64)
    for p in paths:
        arr = cache.load(p, sha256=f"{abs(hash(str(p))):064x}"[:64])
        expected = np.asarray(T.Resize(64, interpolation=T.InterpolationMode.BICUBIC)(open_rgb(p)))
        if min(open_rgb(p).size) <= 64:  # small images are stored as they are
            expected = np.asarray(open_rgb(p))
        assert arr.dtype == np.uint8 and arr.shape == expected.shape and np.array_equal(arr, expected)
    assert arr.shape == (24, 24, 3)
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # atomic writes leave nothing behind


def test_second_epoch_and_second_run_decode_nothing(tmp_path, ws, decodes):
    imgs = _jpegs(tmp_path / "img", 6)
    pdata = load_pretrain_data([make_corpus(tmp_path / "c.csv", imgs)], ws)
    assert len(pdata.train_sha256) == len(pdata.train) and len(pdata.val_sha256) == len(pdata.val)
    tf = T.Compose([T.RandomResizedCrop(32), T.PILToTensor()])
    cache = DecodeCache.in_workspace(ws, 64)
    ds = ImageDataset(pdata.train, tf, 0, cache=cache, hashes=pdata.train_sha256)
    first = [ds[(i, 0)] for i in range(len(ds))]
    assert len(decodes.calls) == len(ds) and cache.misses == len(ds)
    _ = [ds[(i, 1)] for i in range(len(ds))]  # second epoch
    assert len(decodes.calls) == len(ds) and cache.hits == len(ds)
    # a new run (new cache object, new dataset) reuses the entries and gives the same views
    ds2 = ImageDataset(pdata.train, tf, 0, cache=DecodeCache.in_workspace(ws, 64), hashes=pdata.train_sha256)
    assert all(torch.equal(a, ds2[(i, 0)]) for i, a in enumerate(first))
    assert len(decodes.calls) == len(ds)
    assert sorted((ws.cache / "decoded" / "s64").rglob("*.npy"))  # lives under the workspace cache/


def test_views_from_the_cache_equal_views_from_the_resized_originals(tmp_path, monkeypatch):
    imgs = _jpegs(tmp_path / "img", 3)
    tf = T.Compose([T.RandomResizedCrop(24, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    cached = ImageDataset(imgs, tf, 5, cache=DecodeCache(tmp_path / "cache", 48))
    monkeypatch.setattr(data_mod, "open_rgb", lambda p: resize_shorter(open_rgb(p), 48))
    plain = ImageDataset(imgs, tf, 5)
    for i in range(3):
        assert torch.equal(cached[(i, 2)], plain[(i, 2)])


def test_small_images_give_exactly_the_uncached_views(tmp_path):
    imgs = make_images(tmp_path / "img", 3, size=24)
    tf = T.Compose([T.RandomResizedCrop(16), T.ColorJitter(0.4, 0.4), T.ToTensor()])
    cached = ImageDataset(imgs, tf, 0, cache=DecodeCache(tmp_path / "cache", 256))
    plain = ImageDataset(imgs, tf, 0)
    assert all(torch.equal(cached[(i, 0)], plain[(i, 0)]) for i in range(3))


def test_a_changed_manifest_rebuilds_only_the_changed_images(tmp_path, ws, decodes):
    imgs = _jpegs(tmp_path / "img", 5)
    man = make_corpus(tmp_path / "c.csv", imgs, ["train"] * 4 + ["val"])
    cache = DecodeCache.in_workspace(ws, 64)
    d1 = load_pretrain_data([man], ws)
    assert cache.warm(d1.train, d1.train_sha256) == (4, 0)
    assert cache.warm(d1.train, d1.train_sha256) == (0, 4)
    # the first image is replaced by another photo and the manifest re-read: new sha256, new entry
    _jpegs(tmp_path / "other", 1, seed=7)[0].replace(imgs[0])
    d2 = load_pretrain_data([man], ws)
    assert d2.train_sha256[0] != d1.train_sha256[0] and d2.train_sha256[1:] == d1.train_sha256[1:]
    decodes.calls.clear()
    ds = ImageDataset(d2.train, np.asarray, 0, cache=cache, hashes=d2.train_sha256)
    arrays = [ds[(i, 0)] for i in range(len(ds))]
    assert decodes.calls == [str(imgs[0])]  # only the changed image was decoded again
    assert np.array_equal(arrays[0], np.asarray(resize_shorter(open_rgb(imgs[0]), 64)))  # not stale


def test_without_hashes_the_key_follows_the_file(tmp_path, decodes):
    img = _jpegs(tmp_path / "img", 1)[0]
    cache = DecodeCache(tmp_path / "cache", 64)
    cache.load(img)
    cache.load(img)
    assert len(decodes.calls) == 1
    _jpegs(tmp_path / "other", 1, seed=3, size=(100, 80))[0].replace(img)
    assert cache.load(img).shape == (64, 80, 3) and len(decodes.calls) == 2


def test_a_damaged_entry_is_rebuilt(tmp_path, decodes):
    img = _jpegs(tmp_path / "img", 1)[0]
    cache = DecodeCache(tmp_path / "cache", 64)
    good = cache.load(img, "ab" * 32)
    entry = cache.entry("ab" * 32)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated by a disk problem
    assert np.array_equal(cache.load(img, "ab" * 32), good) and len(decodes.calls) == 2
    assert np.array_equal(np.load(entry), good)


def test_bad_original_and_unwritable_cache_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = ImageDataset([bad], np.asarray, 0, cache=DecodeCache(tmp_path / "cache", 64))
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        ds[(0, 0)]
    img = _jpegs(tmp_path / "img", 1)[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="decode cache|cannot write|cannot create"):
        DecodeCache(blocker / "cache", 64).load(img)


def test_decode_cache_config(ws):
    assert decode_cache_for({"cache_size": 0, "image_size": 224}, ws) is None
    c = decode_cache_for({"cache_size": 256, "image_size": 224}, ws)
    assert c is not None and c.root == ws.cache / "decoded" / "s256" and c.size == 256
    for bad, match in [
        (-1, "cache_size.*-1"),
        ("big", "cache_size.*'big'"),
        (True, "cache_size"),
        (128, "image_size"),
    ]:
        with pytest.raises(UsageError, match=match):
            decode_cache_for({"cache_size": bad, "image_size": 224}, ws)
    assert resolve_config("dino")["cache_size"] == 256


def test_pretrain_datasets_use_the_cache_and_the_methods_views(tmp_path, ws, decodes):
    imgs = _jpegs(tmp_path / "img", 4)
    pdata = load_pretrain_data([make_corpus(tmp_path / "c.csv", imgs, ["train"] * 3 + ["val"])], ws)
    cfg = resolve_config(
        "simclr", dict(backbone="resnet10t", init="random", image_size=32, proj_hidden_dim=8, proj_out_dim=4)
    )
    cfg["cache_size"] = 64
    train, val = pretrain_datasets(pdata, SimCLR(cfg), cfg, ws)
    assert train.cache is not None and train.hashes == pdata.train_sha256 and val.hashes == pdata.val_sha256
    assert train[(0, 0)]["views"][0].shape == (3, 32, 32) and len(decodes.calls) == 1


def test_persistent_loader_serves_every_epoch_like_a_fresh_one(tmp_path):
    imgs = make_images(tmp_path / "img", 6, size=24)
    tf = T.Compose([T.RandomResizedCrop(16), T.PILToTensor()])
    ds = ImageDataset(imgs, tf, 0, cache=DecodeCache(tmp_path / "cache", 32))
    try:
        loaders, seen = [], []
        for epoch in range(2):
            batches = epoch_batches(epoch_order(6, 0, epoch), 2, epoch, drop_last=True)
            gen = torch.Generator().manual_seed(epoch)
            loader = make_loader(ds, batches, 1, False, gen)
            loaders.append(loader)
            seen.append([b for b in loader])
            fresh = make_loader(ds, batches, 0, False, gen)
            assert all(torch.equal(a, b) for a, b in zip(seen[-1], fresh, strict=True))
        assert loaders[0] is loaders[1] and loaders[0].persistent_workers
        assert loaders[0].prefetch_factor == data_mod.PREFETCH_FACTOR
        assert not all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))
    finally:
        close_loaders(ds)
    assert ds._loaders == {}


def test_entries_are_not_fsynced_but_checked_on_read(tmp_path, monkeypatch, decodes):
    # An fsync per entry was most of a short run's first epoch (about 14 ms per image).
    def no_fsync(fd):
        raise AssertionError("decode cache entry fsynced")

    monkeypatch.setattr(os, "fsync", no_fsync)
    img = _jpegs(tmp_path / "img", 1)[0]
    cache = DecodeCache(tmp_path / "cache", 64)
    good = cache.load(img, "cd" * 32)
    entry = cache.entry("cd" * 32)
    assert np.array_equal(np.load(entry), good)  # still a plain .npy (the 8-byte check trailer is ignored)
    data = bytearray(entry.read_bytes())
    data[-20] ^= 0xFF  # one pixel altered on disk (or zeroed by a power cut): same size, valid header
    entry.write_bytes(bytes(data))
    assert np.array_equal(cache.load(img, "cd" * 32), good) and len(decodes.calls) == 2  # rebuilt
    assert np.array_equal(cache.load(img, "cd" * 32), good) and cache.hits == 1


def test_entries_honour_the_umask_and_a_full_disk_is_one_line(tmp_path, monkeypatch):
    img = _jpegs(tmp_path / "img", 1)[0]
    old = os.umask(0o022)
    try:
        cache = DecodeCache(tmp_path / "cache", 64)
        cache.load(img, "ef" * 32)
        assert stat.S_IMODE(cache.entry("ef" * 32).stat().st_mode) == 0o644
    finally:
        os.umask(old)

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.os, "replace", full)
    with pytest.raises(DiskFullError, match=r"12121212.*\.npy: no space left"):
        cache.load(img, "12" * 32)
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_tiny_originals_get_no_entry_and_the_same_views(tmp_path, decodes):
    # Decoding a 32 px PNG costs less than reading an entry back: such images are not copied.
    imgs = make_images(tmp_path / "img", 3, size=24) + _jpegs(tmp_path / "big", 1, size=(80, 60))
    cache = DecodeCache(tmp_path / "cache", 256)
    tf = T.Compose([T.RandomResizedCrop(16), T.ColorJitter(0.4, 0.4), T.PILToTensor()])
    cached = ImageDataset(imgs, tf, 0, cache=cache, hashes=[f"{i:02d}" * 32 for i in range(4)])
    first = [cached[(i, 0)] for i in range(4)]
    assert [p.name for p in (tmp_path / "cache").rglob("*.npy")] == [f"{'03' * 32}.npy"]  # 80 x 60 only
    assert all(torch.equal(a, cached[(i, 0)]) for i, a in enumerate(first))
    for i, p in enumerate(imgs):
        with data_mod.seeded_rng(data_mod.item_seed(0, 0, i)):
            assert torch.equal(first[i], tf(open_rgb(p)))


def test_cache_built_up_front_on_the_fly_or_not_at_all_gives_the_same_batches(tmp_path):
    imgs = _jpegs(tmp_path / "img", 4, size=(120, 90)) + make_images(tmp_path / "png", 2, size=24)
    hashes = [f"{i:02d}" * 32 for i in range(len(imgs))]
    tf = T.Compose([T.RandomResizedCrop(24, scale=(0.3, 1.0)), T.RandomHorizontalFlip(), T.PILToTensor()])
    up_front = DecodeCache(tmp_path / "a", 64)
    assert up_front.warm(imgs, hashes) == (6, 0)
    datasets = [
        ImageDataset(imgs, tf, 1, cache=up_front, hashes=hashes),
        ImageDataset(imgs, tf, 1, cache=DecodeCache(tmp_path / "b", 64), hashes=hashes),  # built by workers
    ]
    batches = epoch_batches(epoch_order(6, 1, 0), 3, 0, drop_last=True)
    try:
        runs = [
            list(make_loader(ds, batches, w, False, torch.Generator()))
            for ds, w in zip(datasets, (0, 2), strict=True)
        ]
    finally:
        close_loaders(datasets[1])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert sorted(p.name for p in (tmp_path / "a").rglob("*.npy")) == sorted(
        p.name for p in (tmp_path / "b").rglob("*.npy")
    )
    with pytest.MonkeyPatch.context() as mp:  # no cache: the originals through the same resize
        mp.setattr(data_mod, "open_rgb", lambda p: resize_shorter(open_rgb(p), 64))
        plain = list(make_loader(ImageDataset(imgs, tf, 1), batches, 0, False, torch.Generator()))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], plain, strict=True))


def test_a_killed_writers_temporary_is_removed_on_the_next_build(tmp_path):
    img = _jpegs(tmp_path / "img", 1)[0]
    cache = DecodeCache(tmp_path / "cache", 64)
    entry = cache.entry("ab" * 32)
    entry.parent.mkdir(parents=True)
    leftover = entry.with_name(f".{entry.name}.999999999.0.tmp")  # no such pid
    leftover.write_bytes(b"half")
    os.utime(leftover, (1, 1))
    cache.load(img, "ab" * 32)
    assert entry.is_file() and not leftover.exists()
