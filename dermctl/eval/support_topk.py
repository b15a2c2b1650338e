"""Compiled top-k selection over many support sets: the CPU engine of the few-shot kNN sweep.

A sweep scores every query against every training image once (one matrix product); each support set
(a subset of the training images) then needs, per query, its k most similar members and their vote.
Done with generic top-k kernels (torch.topk, argpartition, FAISS heaps) this selection costs more
than the matrix product itself: tens of thousands of small selections per query. Here one compiled
loop over queries (split over plain threads) handles every support set of the sweep while the query's
similarity row is in cache:

1. gather the member similarities from the query's row (members sorted, so reads run forward);
2. when the support is large (m >= 4k), a cheap lower bound: split the m values into k groups; the
   smallest of the k group maxima is <= the k-th largest value, so only values above it can be
   among the top k (about 3k candidates remain, instead of m). The bound of one support set is tried
   first on the next set of the same size, in a single gather-and-filter pass, and kept only when at
   least k values pass it;
3. bisect a threshold on the candidate values until exactly k are at or above it (a handful of
   vectorised counting passes);
4. exact ties at the boundary (duplicated images, collapsed features) fall back to sorting the
   candidates by (similarity descending, training index ascending): the lower training index wins.

The selected set is exactly the k most similar members (ties aside, any exact method picks the same
set), so predictions equal those of a brute-force implementation of the rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, uint32, uint64

_LOW32 = 0xFFFFFFFF


@njit(cache=True)
def _count_ge(values: np.ndarray, n: int, x: np.float32) -> int:
    count = 0
    for j in range(n):
        count += values[j] >= x
    return count


@njit(cache=True)
def _exact_topk(
    cv: np.ndarray, ci: np.ndarray, c: int, kk: int, out_v: np.ndarray, out_i: np.ndarray
) -> None:
    """Top kk of c candidates by (value desc, training index asc), written sorted. Used for exact ties
    at the boundary (rare) and for sorted top-k output.

    Sort key: the float's bits mapped to an order-preserving unsigned int (high 32 bits) and the
    complemented index (low 32 bits), so one integer sort orders both."""
    bits = cv[:c].view(np.uint32)
    keys = np.empty(c, dtype=np.uint64)
    for j in range(c):
        b = bits[j]
        if b == uint32(0x80000000):  # -0.0 sorts as +0.0
            b = uint32(0)
        okey = b ^ ((uint32(0) - (b >> uint32(31))) | uint32(0x80000000))
        keys[j] = (uint64(okey) << uint64(32)) | (uint64(_LOW32) - uint64(ci[j]))
    keys.sort()
    out_bits = out_v.view(np.uint32)
    for t in range(kk):
        key = keys[c - 1 - t]
        okey = uint32(key >> uint64(32))
        out_bits[t] = okey ^ uint32(0x80000000) if okey & uint32(0x80000000) else ~okey
        out_i[t] = np.int64(uint64(_LOW32) - (key & uint64(_LOW32)))


@njit(cache=True)
def _select(
    row: np.ndarray,
    members: np.ndarray,
    a: int,
    m: int,
    kk: int,
    cv: np.ndarray,
    ci: np.ndarray,
    out_v: np.ndarray,
    out_i: np.ndarray,
    hint: float,
) -> float:
    """The kk most similar of the m members members[a:a+m] of a query `row`, into out_v/out_i (unordered).

    `hint` is the lower bound found for an earlier support set of the same size and query (-inf for
    none): tried first in a single gather-and-filter pass, it is kept only when at least kk values
    pass it, so it never changes the result. Returns the bound to hint with next time."""
    if kk >= m:
        for j in range(m):
            out_i[j] = members[a + j]
            out_v[j] = row[out_i[j]]
        return hint
    c = 0
    if m >= 4 * kk and hint > -np.inf:
        t = np.float32(hint)
        for j in range(m):
            i = members[a + j]
            v = row[i]
            cv[c] = v
            ci[c] = i
            c += v >= t
    if c < kk:
        if m >= 4 * kk:
            g = m // kk
            t = np.inf
            for gi in range(kk):
                mx = -np.inf
                for j in range(a + gi * g, a + gi * g + g):
                    v = row[members[j]]
                    cv[j - a] = v
                    mx = max(mx, v)
                t = min(t, mx)
            for j in range(a + kk * g, a + m):
                cv[j - a] = row[members[j]]
            hint = t
            # keep candidates >= t (branch-free compaction, in place: c <= j always)
            c = 0
            for j in range(m):
                v = cv[j]
                cv[c] = v
                ci[c] = members[a + j]
                c += v >= t
        else:  # small support: every member is a candidate
            for j in range(m):
                ci[j] = members[a + j]
                cv[j] = row[ci[j]]
            c = m
    if c > kk:
        lo = cv[0]
        hi = cv[0]
        for j in range(c):
            lo = min(lo, cv[j])
            hi = max(hi, cv[j])
        # invariant: count(>= lo) > kk and count(>= hi) < kk
        if _count_ge(cv, c, hi) < kk:
            for _ in range(64):
                mid = np.float32(lo + (hi - lo) * np.float32(0.5))
                if not (lo < mid < hi):
                    break
                n = _count_ge(cv, c, mid)
                if n == kk:
                    o = 0
                    for j in range(c):
                        if cv[j] >= mid:
                            out_v[o] = cv[j]
                            out_i[o] = ci[j]
                            o += 1
                    return hint
                if n > kk:
                    lo = mid
                else:
                    hi = mid
        _exact_topk(cv, ci, c, kk, out_v, out_i)
        return hint
    for j in range(kk):
        out_v[j] = cv[j]
        out_i[j] = ci[j]
    return hint


def _threads() -> int:
    """Worker threads: torch's intra-op setting (what the user allowed for compute), at least 1."""
    import torch

    return max(1, int(torch.get_num_threads()))


def _run_split(kernel: Callable[[int, int], None], nq: int) -> None:
    """Run kernel(q0, q1) over query blocks on plain threads (the kernels release the GIL).

    Plain threads, not numba's parallel backends: numba's OpenMP layer shares libgomp with torch and
    left forked children (DataLoader workers, torch.multiprocessing) hanging or aborting; a thread
    pool that has finished holds no locks across a fork."""
    n_threads = min(_threads(), max(1, nq // 64))
    if n_threads == 1:
        kernel(0, nq)
        return
    # several blocks per thread: the pool balances queries of uneven cost
    bounds = np.linspace(0, nq, 8 * n_threads + 1).astype(np.int64)
    blocks = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        for future in [pool.submit(kernel, a, b) for a, b in blocks]:
            future.result()


def _max_size(offsets: np.ndarray) -> int:
    return int(np.diff(offsets).max()) if offsets.size > 1 else 0


@njit(nogil=True, cache=True)
def _sweep_kernel(
    sim: np.ndarray,
    members: np.ndarray,
    offsets: np.ndarray,
    ks: np.ndarray,
    m_max: int,
    q0: int,
    q1: int,
    labels: np.ndarray,
    n_classes: int,
    temperature: float,
    weighted: bool,
    pred: np.ndarray,
    votes: np.ndarray,
    vals: np.ndarray,
    idx: np.ndarray,
) -> None:
    """Queries q0..q1-1 against every support set. Voting (`vals` empty): pred (n_sets, nq) and, when
    `votes` is not empty, votes (n_sets, nq, n_classes). Sorted top k (`vals` not empty): vals/idx
    (n_sets, nq, k), prefilled with -inf / -1."""
    n_sets = offsets.size - 1
    sorted_topk = vals.shape[0] > 0
    for q in range(q0, q1):
        row = sim[q]
        cv = np.empty(m_max, dtype=np.float32)
        ci = np.empty(m_max, dtype=np.int64)
        out_v = np.empty(m_max, dtype=np.float32)
        out_i = np.empty(m_max, dtype=np.int64)
        acc = np.empty(n_classes)
        hint = -np.inf
        prev_m = -1
        for r in range(n_sets):
            a = offsets[r]
            m = offsets[r + 1] - a
            kk = min(ks[r], m)
            if m != prev_m:  # a bound only hints for supports of the same size
                hint = -np.inf
                prev_m = m
            if kk >= 1:
                hint = _select(row, members, a, m, kk, cv, ci, out_v, out_i, hint)
            if sorted_topk:
                if kk >= 1:
                    _exact_topk(out_v, out_i, kk, kk, vals[r, q], idx[r, q])
                continue
            acc[:] = 0.0
            if kk >= 1 and weighted:
                top = out_v[0]
                for j in range(kk):
                    top = max(top, out_v[j])
                # exp((s - s_max) / T): DINO's exp(s / T) up to a per-query factor, without overflow
                for j in range(kk):
                    acc[labels[out_i[j]]] += math.exp((np.float64(out_v[j]) - np.float64(top)) / temperature)
            elif kk >= 1:
                for j in range(kk):
                    acc[labels[out_i[j]]] += 1.0
            best = 0
            for c in range(1, n_classes):
                if acc[c] > acc[best]:  # strict: ties go to the lowest class index
                    best = c
            pred[r, q] = best
            if votes.shape[0]:
                votes[r, q, :] = acc


def _pack(sim: np.ndarray, supports: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C-contiguous float32 sim, concatenated members, offsets); the compiled loops do not check
    bounds, so every index is checked here."""
    sim = np.ascontiguousarray(sim, dtype=np.float32)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D, got shape {sim.shape}")
    members = (
        np.concatenate([np.asarray(s, dtype=np.int64).ravel() for s in supports])
        if len(supports)
        else np.zeros(0, np.int64)
    )
    if members.size and (members.min() < 0 or members.max() >= sim.shape[1]):
        raise ValueError(f"support indices must lie in [0, {sim.shape[1]})")
    offsets = np.zeros(len(supports) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([np.asarray(s).size for s in supports])
    return sim, members, offsets


def support_votes(
    sim: np.ndarray,
    supports: Sequence[np.ndarray],
    labels: np.ndarray,
    k: int | Sequence[int],
    temperature: float,
    weighted: bool,
    n_classes: int,
    keep_votes: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (n_sets, n_query) from each query's k most similar members of each support set, and
    (when `keep_votes`) the summed votes (n_sets, n_query, n_classes); ties go to the lowest class.
    `k` is one number or one per support set, capped at the support's size.

    Pass every support set of a sweep in one call: each query's similarity row is then read from
    memory once for all of them.

    `sim` is (n_query, n_train) float32 cosine similarity; supports hold training indices. Weighted
    votes are exp((s - s_max) / T): DINO's exp(s / T) up to a per-query factor that normalisation
    removes."""
    sim, members, offsets = _pack(sim, supports)
    ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(supports),)).copy()
    y = np.asarray(labels, dtype=np.int64)
    if y.shape != (sim.shape[1],) or (y.size and (y.min() < 0 or y.max() >= n_classes)):
        raise ValueError(f"labels must be {sim.shape[1]} class indices in [0, {n_classes})")
    nq, n_sets = sim.shape[0], len(supports)
    pred = np.empty((n_sets, nq), dtype=np.int64)
    votes = np.zeros((n_sets, nq, n_classes) if keep_votes else (0, 0, 0))
    none_f, none_i = np.zeros((0, 0, 0), dtype=np.float32), np.zeros((0, 0, 0), dtype=np.int64)
    m_max = _max_size(offsets)
    t, w, c = float(temperature), bool(weighted), int(n_classes)
    _run_split(
        lambda q0, q1: _sweep_kernel(
            sim, members, offsets, ks, m_max, q0, q1, y, c, t, w, pred, votes, none_f, none_i
        ),
        nq,
    )
    return pred, (votes if keep_votes else None)


def support_topk(sim: np.ndarray, supports: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, training indices), each (n_sets, n_query, k), sorted by similarity descending (lower index
    first on ties); positions past a support's size hold -inf / -1."""
    sim, members, offsets = _pack(sim, supports)
    nq, n_sets = sim.shape[0], len(supports)
    kk = int(k)
    vals = np.full((n_sets, nq, kk), -np.inf, dtype=np.float32)
    idx = np.full((n_sets, nq, kk), -1, dtype=np.int64)
    ks = np.full(n_sets, kk, dtype=np.int64)
    labels = np.zeros(sim.shape[1], dtype=np.int64)
    pred, votes = np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0, 0))
    m_max = _max_size(offsets)
    _run_split(
        lambda q0, q1: _sweep_kernel(
            sim, members, offsets, ks, m_max, q0, q1, labels, 1, 1.0, False, pred, votes, vals, idx
        ),
        nq,
    )
    return vals, idx
