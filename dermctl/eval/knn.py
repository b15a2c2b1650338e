"""Weighted k-nearest-neighbour classification on frozen features (DINO, Caron et al. 2021) and the
few-shot kNN curves of Gröger et al. (Figure 1).

The rule (DINO's `eval_knn.py`): L2-normalise features, cosine similarity, keep the k most similar
training images, each votes for its class with weight exp(similarity / T) (k = 20, T = 0.07), the class
with the largest summed vote wins; ties go to the lowest class index. `vote="majority"` counts votes
instead. With s-shot support sets of K classes the support holds s*K images: k is capped at s*K (with
1 shot and 8 classes, k = 8: every support image votes, weighted by its similarity).

`knn_predict` runs the rule on a FAISS inner-product index. A sweep over many support sets (`KnnSweep`)
computes the query x train similarity matrix ONCE and, per support set, only gathers its columns and
takes the top k; the predictions are identical to running the rule on each support set afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dermctl.errors import UsageError
from dermctl.eval.fewshot import (
    ALL,
    Shots,
    check_shots,
    class_members,
    curve_point,
    draw_support,
    repeats_for,
)
from dermctl.eval.metrics import macro_f1
from dermctl.runtime.device import compute_device

VOTES = ("weighted", "majority")
NUMBA_MIN_PAIRS = 2_000_000  # query x train pairs from which the compiled CPU selection is used
DEFAULT_K = 20
DEFAULT_T = 0.07
# k grid of `--k auto`, chosen on validation macro-F1 per support set (capped at the support size).
K_GRID = (1, 3, 5, 10, 20, 50, 100, 200)


def normalise(x: Any) -> np.ndarray:
    """Row-wise L2 normalisation in float32 (all-zero rows stay zero)."""
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


def check_rule(k: int, temperature: float, vote: str) -> None:
    if vote not in VOTES:
        raise UsageError(f"--vote: {vote!r} is not one of {', '.join(VOTES)}")
    if int(k) < 1:
        raise UsageError(f"--k: {k} must be a positive integer (or 'auto')")
    if not temperature > 0:
        raise UsageError(f"--temperature: {temperature} must be > 0")


def _faiss_index(train: np.ndarray) -> Any:
    """An exact inner-product index; on the compute device's GPU when it is one and this FAISS build has
    GPUs (a CPU-only FAISS build searches on the CPU: exact search gives the same neighbours)."""
    import faiss

    index = faiss.IndexFlatIP(train.shape[1])
    dev = compute_device()
    if dev.type == "cuda" and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), dev.index or 0, index)
    index.add(train)
    return index


def vote_scores(
    sims: np.ndarray, neighbour_labels: np.ndarray, n_classes: int, temperature: float, vote: str
) -> np.ndarray:
    """(n, n_classes) summed votes of the neighbours (rows: queries), normalised to sum to 1."""
    n, k = sims.shape
    if vote == "weighted":
        # exp((s - max s) / T): the normalised votes of DINO's exp(s / T), without overflow at small T
        s64 = sims.astype(np.float64)
        weights = np.exp((s64 - s64.max(axis=1, keepdims=True)) / temperature)
    else:
        weights = np.ones((n, k), dtype=np.float64)
    flat = (np.arange(n, dtype=np.int64)[:, None] * n_classes + neighbour_labels).ravel()
    votes = np.bincount(flat, weights=weights.ravel(), minlength=n * n_classes).reshape(n, n_classes)
    return votes / np.maximum(votes.sum(axis=1, keepdims=True), 1e-300)


def _decide(scores: np.ndarray) -> np.ndarray:
    # np.argmax returns the first maximal index: ties go to the lowest class index.
    return np.argmax(scores, axis=1).astype(np.int64)


def knn_predict(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    n_classes: int,
    k: int = DEFAULT_K,
    T: float = DEFAULT_T,
    vote: str = "weighted",
) -> tuple[np.ndarray, np.ndarray]:
    """DINO's weighted kNN: (predicted class per test row, (n_test, n_classes) normalised votes).

    k is capped at the number of training rows."""
    check_rule(k, T, vote)
    train = normalise(train_x)
    test = normalise(test_x)
    y = np.asarray(train_y, dtype=np.int64)
    k_eff = min(int(k), train.shape[0])
    sims, ids = _faiss_index(train).search(test, k_eff)
    scores = vote_scores(sims, y[ids], n_classes, T, vote)
    return _decide(scores), scores.astype(np.float32)


class KnnSweep:
    """Many support sets (subsets of one training set) against one query set.

    The query x train cosine-similarity matrix is computed once (one matrix product); a support set
    then only needs each query's k most similar members. `backend` "numba" (the default on a CPU)
    selects them for a whole batch of support sets in one compiled parallel loop
    (`dermctl.eval.support_topk`); "torch" gathers columns and runs torch.topk on `device` (the
    default on a GPU, and on a CPU for small problems, below NUMBA_MIN_PAIRS query x train pairs, where
    numba's one-off compilation would cost more than it saves). `device` None: the compute device
    (`dermctl.runtime.device.compute_device`, set by `--device`). Memory: n_query x n_train float32."""

    def __init__(
        self,
        train_x: Any,
        train_y: Any,
        query_x: Any,
        n_classes: int,
        device: str | None = None,
        backend: str | None = None,
    ) -> None:
        self.train_y = np.asarray(train_y, dtype=np.int64)
        self.n_classes = n_classes
        self.device = torch.device(device) if device else compute_device()
        # numba pays ~12 s of compilation on a machine's first run; below NUMBA_MIN_PAIRS query x train
        # pairs torch's topk is as fast as that is worth (the two backends give identical predictions)
        small = len(query_x) * len(self.train_y) < NUMBA_MIN_PAIRS
        self.backend = backend or ("numba" if self.device.type == "cpu" and not small else "torch")
        if self.backend not in ("numba", "torch"):
            raise ValueError(f"backend {self.backend!r}: expected 'numba' or 'torch'")
        self._train = np.asarray(train_x, dtype=np.float32)
        self._query = normalise(query_x)
        self.n_train = int(self._train.shape[0])
        self._sim: np.ndarray | None = None
        self._sim_t: torch.Tensor | None = None

    @property
    def sim_t(self) -> torch.Tensor:
        """(n_query, n_train) cosine similarities as a tensor on `device`, computed on first use.

        Training rows are scaled after the product instead of normalised before it: the same cosine
        (to float rounding) without a normalised copy of the training matrix."""
        if self._sim_t is None:
            train = torch.from_numpy(np.ascontiguousarray(self._train)).to(self.device)
            inv_norm = 1.0 / torch.linalg.vector_norm(train, dim=1).clamp_min(1e-12)
            sim = torch.from_numpy(self._query).to(self.device) @ train.T
            self._sim_t = sim.mul_(inv_norm)
        return self._sim_t

    @property
    def sim(self) -> np.ndarray:
        """The similarity matrix as a C-contiguous NumPy array (CPU selections)."""
        if self._sim is None:
            self._sim = np.ascontiguousarray(self.sim_t.cpu().numpy())
        return self._sim

    def _supports(self, supports: Sequence[np.ndarray | None]) -> list[np.ndarray]:
        everyone = np.arange(self.n_train, dtype=np.int64)
        return [everyone if s is None else np.asarray(s, dtype=np.int64) for s in supports]

    def _topk_torch(self, support: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, labels) of each query's k nearest support members, sorted, with torch.topk."""
        sup_t = torch.as_tensor(support, device=self.device)
        sub = self.sim_t if support.size == self.n_train else self.sim_t.index_select(1, sup_t)
        top, pos = torch.topk(sub, min(k, support.size), dim=1, largest=True, sorted=True)
        return top.cpu().numpy(), self.train_y[support[pos.cpu().numpy()]]

    def predict_batch(
        self,
        supports: Sequence[np.ndarray | None],
        k: int | Sequence[int] = DEFAULT_K,
        T: float = DEFAULT_T,
        vote: str = "weighted",
        with_scores: bool = True,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(n_sets, n_query) predictions and, with `with_scores`, (n_sets, n_query, n_classes) normalised
        votes: one row per support set (None = all training rows). `k` is one number or one per set,
        capped at each support's size. Ties between classes go to the lowest class index."""
        sups = self._supports(supports)
        if self.backend == "numba":
            from dermctl.eval.support_topk import support_votes  # numba loads in ~0.3 s: only when used

            pred, votes = support_votes(
                self.sim, sups, self.train_y, k, T, vote == "weighted", self.n_classes, with_scores
            )
        else:
            ks = np.broadcast_to(np.asarray(k, dtype=np.int64), (len(sups),))
            votes = np.stack(
                [
                    vote_scores(*self._topk_torch(sup, int(kk)), self.n_classes, T, vote)
                    for sup, kk in zip(sups, ks, strict=True)
                ]
            )
            pred = np.argmax(votes, axis=2).astype(np.int64)  # first maximal index: lowest class
        if not with_scores or votes is None:
            return pred, None
        scores = votes / np.maximum(votes.sum(axis=2, keepdims=True), 1e-300)
        return pred, scores.astype(np.float32)

    def predict(
        self, support: np.ndarray | None, k: int = DEFAULT_K, T: float = DEFAULT_T, vote: str = "weighted"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Predictions and normalised votes using only the `support` training rows (None = all)."""
        pred, scores = self.predict_batch([support], k, T, vote)
        assert scores is not None
        return pred[0], scores[0]

    def predict_many_k(
        self, support: np.ndarray | None, ks: Sequence[int], T: float = DEFAULT_T, vote: str = "weighted"
    ) -> dict[int, np.ndarray]:
        """{k: predictions} for several k from one sorted top-k search (k capped at the support size)."""
        (sup,) = self._supports([support])
        k_max = min(max(int(k) for k in ks), sup.size)
        if self.backend == "numba":
            from dermctl.eval.support_topk import support_topk

            vals, idx = support_topk(self.sim, [sup], k_max)
            top, labels = vals[0], self.train_y[idx[0]]
        else:
            top, labels = self._topk_torch(sup, k_max)
        out: dict[int, np.ndarray] = {}
        for k in ks:
            kk = min(int(k), k_max)
            if kk not in out:
                out[kk] = _decide(vote_scores(top[:, :kk], labels[:, :kk], self.n_classes, T, vote))
        return out


def choose_k(
    val_sweep: KnnSweep,
    val_y: np.ndarray,
    support: np.ndarray | None,
    T: float,
    vote: str,
    grid: Sequence[int] = K_GRID,
) -> int:
    """The k of `grid` (capped at the support size) with the best validation macro-F1; smallest k on ties."""
    preds = val_sweep.predict_many_k(support, grid, T, vote)
    best_k, best = 0, -1.0
    for k in sorted(preds):
        f1 = macro_f1(val_y, preds[k], val_sweep.n_classes)
        if f1 > best:
            best_k, best = k, f1
    return best_k


@dataclass
class KnnOutcome:
    """A few-shot curve plus the headline ("all" training images) predictions."""

    curve: list[dict[str, Any]]
    pred: np.ndarray
    scores: np.ndarray
    k: int


def knn_fewshot(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    n_classes: int,
    shots: Sequence[Shots] = (1, 5, 10, ALL),
    repeats: int = 10,
    k: int | str = DEFAULT_K,
    T: float = DEFAULT_T,
    vote: str = "weighted",
    seed: int = 0,
    val_x: Any | None = None,
    val_y: Any | None = None,
    class_names: Sequence[str] | None = None,
    on_step: Callable[[], None] | None = None,
) -> KnnOutcome:
    """Macro-F1 on the test set for `repeats` seeded stratified support sets per shot count.

    `k="auto"` picks k per support set on the validation split from `K_GRID`. The headline predictions
    use the whole training split (and the configured or auto-chosen k)."""
    auto = k == "auto"
    check_rule(DEFAULT_K if auto else int(k), T, vote)
    ytr = np.asarray(train_y, dtype=np.int64)
    yte = np.asarray(test_y, dtype=np.int64)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    check_shots(shots, ytr, names)
    if repeats < 1:
        raise UsageError(f"--repeats: {repeats} must be at least 1")
    test_sweep = KnnSweep(train_x, ytr, test_x, n_classes)
    val_sweep = None
    yva = None
    if auto:
        if val_x is None or val_y is None or len(val_y) == 0:
            raise UsageError("--k auto: the task has no validation split to choose k on; give a number")
        yva = np.asarray(val_y, dtype=np.int64)
        val_sweep = KnnSweep(train_x, ytr, val_x, n_classes)

    def pick_k(support: np.ndarray | None) -> int:
        if val_sweep is not None and yva is not None:
            return choose_k(val_sweep, yva, support, T, vote)
        return min(int(k), ytr.size if support is None else len(support))

    members = class_members(ytr, n_classes)
    # The headline (every training image; scores kept) is also the curve's "all" point.
    k_all = pick_k(None)
    pred, scores = test_sweep.predict(None, k_all, T, vote)
    # Every few-shot support set of every shot count in one batched selection: each query's
    # similarity row is read once for all of them.
    draws = [
        (s, draw_support(ytr, s, n_classes, seed, r, members))
        for s in shots
        if s != ALL
        for r in range(repeats_for(s, repeats))
    ]
    ks = [pick_k(sup) for _, sup in draws]
    preds = (
        test_sweep.predict_batch([sup for _, sup in draws], ks, T, vote, with_scores=False)[0]
        if draws
        else []
    )
    values: dict[Any, list[float]] = {s: [] for s in shots}
    chosen: dict[Any, list[int]] = {s: [] for s in shots}
    if ALL in shots:
        values[ALL].append(macro_f1(yte, pred, n_classes))
        chosen[ALL].append(k_all)
    for (s, _), kk, p in zip(draws, ks, preds, strict=True):
        values[s].append(macro_f1(yte, p, n_classes))
        chosen[s].append(kk)
    if on_step is not None:
        for _ in range(len(draws) + (ALL in shots)):
            on_step()
    curve = []
    for s in shots:
        used = chosen[s]
        k_field: Any = sorted(set(used)) if auto and len(set(used)) > 1 else used[0]
        curve.append(curve_point(s, values[s], k_field))
    return KnnOutcome(curve=curve, pred=pred, scores=scores, k=k_all)
