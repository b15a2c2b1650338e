"""dermctl.train.data: evaluation-image exclusion, train/val split, seeded views."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers_methods import make_corpus, make_images, make_task
from torchvision import transforms as T

from dermctl.errors import DataError, UsageError
from dermctl.train.data import ImageDataset, epoch_batches, epoch_order, load_pretrain_data
from dermctl.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    w = Workspace.at(tmp_path / "ws")
    w.ensure()
    return w


def test_workspace_task_images_are_dropped_and_counted(tmp_path, ws):
    corpus_imgs = make_images(tmp_path / "corpus", 10)
    task_imgs = make_images(tmp_path / "task", 6, seed=9, prefix="t")
    make_task(ws.manifests / "lesions.csv", task_imgs)
    # The corpus holds copies of 3 task images under other names: exclusion is by content (sha256),
    # computed here because the hand-made manifest has no hashes.
    copies = []
    for i, p in enumerate(task_imgs[:3]):
        q = tmp_path / "corpus" / f"copy{i}.png"
        shutil.copy(p, q)
        copies.append(q)
    man = make_corpus(tmp_path / "corpus.csv", corpus_imgs + copies)
    d = load_pretrain_data([man], ws, seed=0)
    assert d.excluded == 3
    used = set(d.train) | set(d.val)
    assert not used & set(copies)
    assert used == set(corpus_imgs)
    assert str(man.resolve()) in d.manifests

    # The explicit opt-out keeps them.
    d2 = load_pretrain_data([man], ws, allow_task_images=True, seed=0)
    assert d2.excluded == 0 and len(d2.train) + len(d2.val) == 13


def test_exclude_manifest_drops_its_images(tmp_path, ws):
    imgs = make_images(tmp_path / "c", 10)
    man = make_corpus(tmp_path / "c.csv", imgs)
    other = make_corpus(tmp_path / "other.csv", imgs[:4])  # a corpus-role manifest given with --exclude
    d = load_pretrain_data([man], ws, exclude=[other], seed=0)
    assert d.excluded == 4
    assert not (set(d.train) | set(d.val)) & set(imgs[:4])


def test_task_manifest_in_data_is_a_usage_error(tmp_path, ws):
    task = make_task(tmp_path / "task.csv", make_images(tmp_path / "t", 6))
    with pytest.raises(UsageError, match="--allow-task-images"):
        load_pretrain_data([task], ws)
    d = load_pretrain_data([task], ws, allow_task_images=True)
    assert len(d.train) + len(d.val) == 3  # train rows only; test rows never used
    # In a folder, task manifests are skipped (they would be excluded anyway).
    folder = tmp_path / "mf"
    folder.mkdir()
    shutil.copy(task, folder / "task.csv")
    make_corpus(folder / "corpus.csv", make_images(tmp_path / "c", 5))
    d = load_pretrain_data([folder], ws)
    assert len(d.skipped_task_manifests) == 1 and len(d.train) + len(d.val) == 5


def test_val_rows_or_seeded_holdout(tmp_path, ws):
    imgs = make_images(tmp_path / "c", 40, size=8)
    man = make_corpus(tmp_path / "c.csv", imgs)
    a = load_pretrain_data([man], ws, seed=1)
    b = load_pretrain_data([man], ws, seed=1)
    c = load_pretrain_data([man], ws, seed=2)
    assert a.held_out and len(a.val) == 2 and len(a.train) == 38
    assert a.val == b.val and a.val != c.val
    splits = ["val" if i < 3 else ("test" if i < 5 else "train") for i in range(40)]
    man2 = make_corpus(tmp_path / "c2.csv", imgs, splits)
    d = load_pretrain_data([man2], ws)
    assert not d.held_out and d.val == imgs[:3] and d.train == imgs[5:]


def test_no_training_images_is_a_data_error(tmp_path, ws):
    imgs = make_images(tmp_path / "c", 4)
    man = make_corpus(tmp_path / "c.csv", imgs)
    with pytest.raises(DataError, match="no training images"):
        load_pretrain_data([man], ws, exclude=[man])


def test_views_are_seeded_per_seed_epoch_and_index(tmp_path):
    imgs = make_images(tmp_path / "c", 3, size=32)
    tf = T.Compose([T.RandomResizedCrop(16), T.ColorJitter(0.5, 0.5), T.ToTensor()])
    ds = ImageDataset(imgs, tf, seed=0)
    before = torch.get_rng_state()
    x1, x2 = ds[(1, 0)], ds[(1, 0)]
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, ds[(1, 1)])  # another epoch, other views
    assert not torch.equal(x1, ImageDataset(imgs, tf, seed=1)[(1, 0)])
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone


def test_epoch_order_and_batch_skipping():
    assert epoch_order(10, 0, 3) == epoch_order(10, 0, 3)
    assert epoch_order(10, 0, 3) != epoch_order(10, 0, 4)
    order = epoch_order(10, 0, 0)
    full = epoch_batches(order, 4, 0, drop_last=True)
    assert len(full) == 2 and all(len(b) == 4 for b in full)
    assert epoch_batches(order, 4, 0, drop_last=True, skip=1) == full[1:]
    assert len(epoch_batches(order, 4, 0, drop_last=False)[-1]) == 2


class _Draws:
    """A transform that draws from all three generators (python, numpy, torch), as the views do."""

    def __call__(self, img):
        import random

        import numpy as np

        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(1))])


def test_seeding_without_restore_draws_the_same_and_skips_the_costly_state_copy(monkeypatch):
    import random

    import numpy as np

    from dermctl.train.data import seeded_rng

    def draws():
        return (random.random(), float(np.random.rand()), float(torch.rand(1)))

    with seeded_rng(1234):
        restored = draws()
    state = np.random.get_state()

    def no_state_copy(*a, **k):
        raise AssertionError("numpy's RNG state copied (about 0.4 ms per image)")

    monkeypatch.setattr(np.random, "get_state", no_state_copy)
    monkeypatch.setattr(np.random, "set_state", no_state_copy)
    with seeded_rng(1234, restore=False):
        assert draws() == restored
    monkeypatch.undo()
    assert not np.array_equal(np.random.get_state()[1], state[1])  # seeded, not restored


def test_loader_workers_give_the_same_items_as_the_main_process(tmp_path):
    from dermctl.train.data import close_loaders, make_loader

    imgs = make_images(tmp_path / "c", 6, size=24)
    ds = ImageDataset(imgs, _Draws(), seed=3)
    batches = epoch_batches(epoch_order(6, 3, 1), 3, 1, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    before = torch.get_rng_state()
    plain = list(make_loader(ds, batches, 0, False, gen))
    assert torch.equal(torch.get_rng_state(), before)  # the main process's RNG survives its items
    try:
        with_workers = list(make_loader(ds, batches, 2, False, gen))
    finally:
        close_loaders(ds)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_workers, strict=True))
