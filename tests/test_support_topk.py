"""The compiled support-set selection against a brute-force NumPy implementation of DINO's rule."""

from __future__ import annotations

import numpy as np
import pytest

from dermctl.eval.support_topk import support_topk, support_votes


def brute_votes(
    sim: np.ndarray, support: np.ndarray, labels: np.ndarray, k: int, T: float, weighted: bool, n_classes: int
) -> np.ndarray:
    """Per query: sort the support by (similarity desc, training index asc), keep k, sum exp(s / T)."""
    out = np.zeros((sim.shape[0], n_classes))
    for q in range(sim.shape[0]):
        s = sim[q, support].astype(np.float64)
        order = np.lexsort((support, -s))[: min(k, support.size)]
        w = np.exp(s[order] / T) if weighted else np.ones(order.size)
        np.add.at(out[q], labels[support[order]], w)
    return out


def normalised(v: np.ndarray) -> np.ndarray:
    return v / v.sum(axis=-1, keepdims=True)


def random_case(rng: np.random.Generator, ties: bool) -> tuple:
    nq, n, n_classes = 6, int(rng.integers(5, 400)), int(rng.integers(2, 7))
    sim = rng.uniform(-1, 1, (nq, n)).astype(np.float32)
    if ties:  # few distinct values: exact ties at the k boundary on purpose
        sim = np.round(sim * 4).astype(np.float32) / 4
    labels = rng.integers(0, n_classes, n)
    return sim, labels, n_classes


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("weighted", [True, False])
def test_votes_equal_brute_force(ties: bool, weighted: bool) -> None:
    rng = np.random.default_rng(7 + ties)
    for _ in range(25):
        sim, labels, n_classes = random_case(rng, ties)
        n = sim.shape[1]
        size = int(rng.integers(1, n + 1))
        # several sets of one size (the bound of one set hints the next) and some of other sizes
        sups = [np.sort(rng.choice(n, size, replace=False)) for _ in range(4)]
        sups += [np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False)) for _ in range(3)]
        ks = [int(rng.integers(1, 60)) for _ in sups]
        pred, votes = support_votes(sim, sups, labels, ks, 0.07, weighted, n_classes)
        assert pred.shape == (len(sups), sim.shape[0]) and votes is not None
        for r, (sup, k) in enumerate(zip(sups, ks, strict=True)):
            ref = brute_votes(sim, sup, labels, k, 0.07, weighted, n_classes)
            assert np.allclose(normalised(votes[r]), normalised(ref), rtol=1e-12, atol=1e-15)
            assert np.array_equal(pred[r], np.argmax(ref, axis=1))  # lowest class on equal votes


def test_large_support_uses_the_bound_and_stays_exact() -> None:
    # m >= 4k: the group-maximum bound and the hint between equal-size sets are exercised
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((40, 3000)).astype(np.float32) * 0.02
    labels = rng.integers(0, 5, 3000)
    sups = [np.sort(rng.choice(3000, 400, replace=False)) for _ in range(12)] + [np.arange(3000)]
    pred, votes = support_votes(sim, sups, labels, 20, 0.07, True, 5)
    for r, sup in enumerate(sups):
        ref = brute_votes(sim, sup, labels, 20, 0.07, True, 5)
        assert np.array_equal(pred[r], np.argmax(ref, axis=1))
        assert np.allclose(normalised(votes[r]), normalised(ref), rtol=1e-12)


def test_ties_go_to_the_lower_training_index() -> None:
    # five identical similarities, k = 2: training rows 1 and 2 (the lowest indices) vote
    sim = np.full((1, 6), 0.5, dtype=np.float32)
    sim[0, 0] = 0.1
    labels = np.array([0, 1, 1, 2, 2, 2])
    pred, votes = support_votes(sim, [np.arange(6)], labels, 2, 0.07, False, 3)
    assert votes is not None and votes[0, 0].tolist() == [0.0, 2.0, 0.0] and pred[0, 0] == 1
    vals, idx = support_topk(sim, [np.arange(6)], 4)
    assert idx[0, 0].tolist() == [1, 2, 3, 4] and vals[0, 0].tolist() == [0.5] * 4


def test_small_temperature_does_not_overflow() -> None:
    # exp(s / T) overflows float64 for T = 1e-4; the votes are computed relative to the top neighbour
    sim = np.array([[0.9, 0.8, 0.85]], dtype=np.float32)
    pred, votes = support_votes(sim, [np.arange(3)], np.array([0, 1, 1]), 3, 1e-4, True, 2)
    assert votes is not None and np.isfinite(votes).all() and pred[0, 0] == 0


def test_sorted_topk_equals_lexsort() -> None:
    rng = np.random.default_rng(11)
    for ties in (False, True):
        sim, _, _ = random_case(rng, ties)
        n = sim.shape[1]
        sups = [np.sort(rng.choice(n, int(rng.integers(1, n + 1)), replace=False)) for _ in range(5)]
        k = 30
        vals, idx = support_topk(sim, sups, k)
        for r, sup in enumerate(sups):
            for q in range(sim.shape[0]):
                order = np.lexsort((sup, -sim[q, sup]))[:k]
                assert np.array_equal(idx[r, q, : order.size], sup[order])
                assert np.array_equal(vals[r, q, : order.size], sim[q, sup[order]])
                assert (idx[r, q, order.size :] == -1).all()


def test_out_of_range_indices_are_refused_before_the_unchecked_loop() -> None:
    sim = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="support indices"):
        support_votes(sim, [np.array([0, 5])], np.zeros(5, dtype=np.int64), 3, 0.07, True, 2)
    with pytest.raises(ValueError, match="labels"):
        support_votes(sim, [np.array([0, 4])], np.array([0, 1, 2, 0, 1]), 3, 0.07, True, 2)
    with pytest.raises(ValueError, match="support indices"):
        support_topk(sim, [np.array([-1])], 3)


def _torch_work_in_child() -> None:
    import torch

    # One thread, as a DataLoader worker runs: a forked child that re-enters the OpenMP team the parent's
    # earlier tests kept busy can hang on its own (seen under pytest-xdist after the training tests); what
    # this test guards is numba's kernels corrupting libgomp for every forked child.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(256, 256)
    (x @ x).sum().item()


def test_leaves_torch_threads_and_forked_children_intact() -> None:
    # numba's OpenMP layer shared libgomp with torch: forked DataLoader / torch.multiprocessing
    # children aborted afterwards. The kernels run on plain threads instead.
    import multiprocessing

    import torch

    threads = torch.get_num_threads()
    sim = np.random.default_rng(0).standard_normal((300, 500)).astype(np.float32)
    support_votes(sim, [np.arange(500)] * 3, np.zeros(500, dtype=np.int64), 20, 0.07, True, 1)
    assert torch.get_num_threads() == threads
    child = multiprocessing.get_context("fork").Process(target=_torch_work_in_child)
    child.start()
    child.join(60)
    if child.is_alive():  # deadlocked in the child's thread pool
        child.kill()
    assert child.exitcode == 0
