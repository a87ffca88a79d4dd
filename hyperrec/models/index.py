"""Candidate index for the retrieval stage: top-k items by inner product with a query embedding.

Two implementations with one `search` signature (`CandidateIndex`):

- `BruteForceIndex` — numpy, exact. One matrix-vector product plus `argpartition`; at < 50k items
  and 64 dims that is well under a millisecond per query, so there is nothing to approximate.
- `IvfIndex` — FAISS IVF-Flat on inner product: k-means cells over the items, a query scans the
  items of the `nprobe` cells whose centroids score highest. Vectors are stored unquantised, so the
  only approximation is which cells are visited.

Why IVF and not HNSW: measured on clustered item embeddings with popularity-skewed norms (what a
two-tower model trained with a dot product gives, see `hyperrec.bench.index`), HNSW on inner product
plateaued at recall@100 ~0.85 at 1M items (efSearch 1600, p99 10 ms) after a 270 s build, while
IVF-Flat scanning 1/16 of its cells reaches ~0.98 at ~2 ms p99 after an ~8 s build. hnswlib has no
wheels for this Python; ScaNN does not work with TF 2.21.

Item ids are row positions in the embedding matrix (0..n-1); the caller maps them to item keys.
Results are sorted by descending score; a slot with no item (catalog minus exclusions smaller than
k) holds id -1 and score -inf.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

#: Below this many items `build_index(kind="auto")` uses exact search: it is both exact and fast.
BRUTE_MAX_ITEMS = 50_000
META_FILE = "index.json"

Exclude = Sequence[np.ndarray | Sequence[int]] | None


@runtime_checkable
class CandidateIndex(Protocol):
    """What the retrieval stage needs from an index, whichever kind it is."""

    kind: str

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item positions and scores per query row: ([n, k] int64, [n, k] float32)."""
        ...

    def save(self, directory: str | Path) -> Path: ...


def _as_matrix(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """float32, C-contiguous, 2-D (a single vector becomes one row): what BLAS and FAISS want."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"expected a [n, d] matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"expected dimension {dim}, got {x.shape[1]}")
    return x


def _check_exclude(exclude: Exclude, n_queries: int) -> list[np.ndarray] | None:
    if exclude is None:
        return None
    if len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries")
    return [np.asarray(e, dtype=np.int64).ravel() for e in exclude]


def _topk_rows(ids: np.ndarray, scores: np.ndarray, k: int, exclude: list[np.ndarray] | None):
    """Drop excluded and empty (-1) slots from candidate rows already sorted by score, keep the first
    k, pad with (-1, -inf). Used on an over-fetched ANN result; one vectorized pass for the batch."""
    n, width = ids.shape
    if width < k:
        ids = np.pad(ids, ((0, 0), (0, k - width)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, k - width)), constant_values=-np.inf)
    keep = ids >= 0
    if exclude is not None and any(len(e) for e in exclude):
        banned = np.full((n, max(len(e) for e in exclude)), -1, np.int64)
        for i, e in enumerate(exclude):
            banned[i, :len(e)] = e
        keep &= ~(ids[:, :, None] == banned[:, None, :]).any(axis=2)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept slots first, score order kept
    kept = np.take_along_axis(keep, first, axis=1)
    out_ids = np.where(kept, np.take_along_axis(ids, first, axis=1), -1).astype(np.int64)
    out_scores = np.where(kept, np.take_along_axis(scores, first, axis=1), -np.inf).astype(np.float32)
    return out_ids, out_scores


def _write_meta(directory: str | Path, meta: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def _read_meta(directory: str | Path, kind: str | None = None) -> dict:
    meta = json.loads((Path(directory) / META_FILE).read_text())
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{directory} holds a {meta.get('kind')!r} index, not {kind!r}")
    return meta


class BruteForceIndex:
    """Exact inner-product search in numpy.

    Exclusions are masked to -inf before the partition, so they cost nothing extra and the result
    is still the exact top-k of the remaining items.
    """

    kind = "brute"

    def __init__(self, embeddings: np.ndarray, max_block_bytes: int = 64 << 20):
        self.embeddings = _as_matrix(embeddings)
        # queries are scored in blocks so a big batch never materialises [n_queries, n_items] at once
        self._block = max(1, max_block_bytes // (4 * max(1, len(self.embeddings))))

    @classmethod
    def build(cls, embeddings: np.ndarray) -> BruteForceIndex:
        return cls(embeddings)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def nbytes(self) -> int:
        return self.embeddings.nbytes

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(queries, self.dim)
        excl = _check_exclude(exclude, len(q))
        n = len(self)
        kk = min(k, n)
        out_ids = np.full((len(q), k), -1, dtype=np.int64)
        out_scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        if kk <= 0:
            return out_ids, out_scores
        for start in range(0, len(q), self._block):
            scores = q[start : start + self._block] @ self.embeddings.T
            rows = np.arange(len(scores))[:, None]
            if excl is not None:
                for r, e in enumerate(excl[start : start + len(scores)]):
                    scores[r, e[(e >= 0) & (e < n)]] = -np.inf
            if kk < n:
                part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            else:
                part = np.broadcast_to(np.arange(n), (len(scores), n))
            part_scores = scores[rows, part]
            order = np.argsort(-part_scores, axis=1, kind="stable")
            ids, top = part[rows, order], part_scores[rows, order]
            ids = np.where(np.isneginf(top), -1, ids)  # fewer than k items left after exclusion
            out_ids[start : start + len(scores), :kk] = ids
            out_scores[start : start + len(scores), :kk] = top
        return out_ids, out_scores

    def save(self, directory: str | Path) -> Path:
        directory = _write_meta(directory, {"kind": self.kind, "items": len(self), "dim": self.dim})
        np.save(directory / "embeddings.npy", self.embeddings)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BruteForceIndex:
        _read_meta(directory, cls.kind)
        return cls(np.load(Path(directory) / "embeddings.npy"))


def default_nlist(n_items: int) -> int:
    """~2·sqrt(n) cells (2000 at 1M), but at least 39 training points per cell, as k-means wants."""
    return max(1, min(round(2 * math.sqrt(n_items)), n_items // 39))


def default_nprobe(nlist: int, n_items: int, min_scanned: int = 5_000) -> int:
    """Visit 1/16 of the cells (measured: recall@100 ≈ 0.98 at 1M, 0.97 at 100k) and at least
    `min_scanned` items, which keeps recall up on small catalogs where cells are tiny
    (50k items: 0.934 scanning 2,000+, 0.978 scanning 5,000+, p99 0.6 ms)."""
    by_fraction = math.ceil(nlist / 16)
    by_items = math.ceil(nlist * min_scanned / max(1, n_items))
    return max(1, min(nlist, max(by_fraction, by_items)))


class IvfIndex:
    """Approximate inner-product search: FAISS IVF-Flat (k-means cells, unquantised vectors).

    Parameters, chosen by measurement (`hyperrec bench index`): `nlist` cells ≈ 2·sqrt(n) and
    `nprobe` = nlist/16 give recall@100 ≈ 0.98 with p99 ≈ 2 ms per query at 1M×64 on 2 cores; raise
    `nprobe` for recall, lower it for latency (it can also be passed per `search` call).
    Exclusions are handled by over-fetching k + len(exclude) and dropping them. If a row still has
    fewer than k results (tiny cells), it is searched again over all cells, so k results come back
    whenever the catalog has them.
    """

    kind = "ivf"

    def __init__(self, index, nprobe: int):
        self.index = index
        self.nprobe = int(nprobe)

    @classmethod
    def build(cls, embeddings: np.ndarray, nlist: int | None = None, nprobe: int | None = None,
              train_per_cell: int = 64, seed: int = 0) -> IvfIndex:
        """k-means on a sample of `train_per_cell`·nlist items (enough for stable centroids, and it
        keeps the 1M build at seconds), then add every item with its row position as id."""
        import faiss

        x = _as_matrix(embeddings)
        n, d = x.shape
        if n == 0:
            raise ValueError("cannot build an IVF index over no items")
        nlist = nlist or default_nlist(n)
        nprobe = nprobe or default_nprobe(nlist, n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = min(n, train_per_cell * nlist)
        train = x if sample == n else x[np.random.default_rng(seed).choice(n, sample, replace=False)]
        index.train(train)
        index.add(x)
        return cls(index, nprobe)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def nlist(self) -> int:
        return self.index.nlist

    @property
    def nbytes(self) -> int:
        """Vectors + ids + centroids (what the index holds in memory, roughly)."""
        return len(self) * (4 * self.dim + 8) + self.nlist * 4 * self.dim

    def __len__(self) -> int:
        return self.index.ntotal

    def _raw(self, q: np.ndarray, k: int, nprobe: int):
        import faiss

        k = min(k, len(self))
        scores, ids = self.index.search(q, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        return ids, scores

    def search(self, queries: np.ndarray, k: int, exclude: Exclude = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        q = _as_matrix(queries, self.dim)
        excl = _check_exclude(exclude, len(q))
        nprobe = min(self.nlist, nprobe or self.nprobe)
        extra = max((len(e) for e in excl), default=0) if excl is not None else 0
        ids, scores = _topk_rows(*self._raw(q, k + extra, nprobe), k, excl)
        # rows short of k while the catalog has enough items left: visit every cell for those
        have = (ids >= 0).sum(axis=1)
        avail = len(self) - (np.array([len(np.unique(e)) for e in excl]) if excl is not None else 0)
        short = np.flatnonzero(have < np.minimum(k, avail))
        if len(short) and nprobe < self.nlist:
            sub_excl = [excl[i] for i in short] if excl is not None else None
            ids[short], scores[short] = _topk_rows(*self._raw(q[short], k + extra, self.nlist), k, sub_excl)
        return ids, scores

    def save(self, directory: str | Path) -> Path:
        import faiss

        meta = {"kind": self.kind, "items": len(self), "dim": self.dim, "nlist": self.nlist,
                "nprobe": self.nprobe, "metric": "inner_product", "library": f"faiss-cpu {faiss.__version__}"}
        directory = _write_meta(directory, meta)
        faiss.write_index(self.index, str(directory / "index.faiss"))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> IvfIndex:
        import faiss

        meta = _read_meta(directory, cls.kind)
        return cls(faiss.read_index(str(Path(directory) / "index.faiss")), meta["nprobe"])


INDEX_KINDS: dict[str, type] = {"brute": BruteForceIndex, "ivf": IvfIndex}


def build_index(embeddings: np.ndarray, kind: str = "auto", brute_max_items: int = BRUTE_MAX_ITEMS,
                **params) -> BruteForceIndex | IvfIndex:
    """An index over `embeddings` ([n_items, d]); `kind="auto"` is exact brute force below
    `brute_max_items` (exact and already fast there) and IVF above. `params` go to `IvfIndex.build`."""
    if kind == "auto":
        kind = "brute" if len(embeddings) < brute_max_items else "ivf"
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected auto, {', '.join(INDEX_KINDS)}")
    return BruteForceIndex(embeddings) if kind == "brute" else IvfIndex.build(embeddings, **params)


def load_index(directory: str | Path) -> BruteForceIndex | IvfIndex:
    """Whichever kind `save` wrote into `directory` (e.g. next to a model export)."""
    kind = _read_meta(directory)["kind"]
    if kind not in INDEX_KINDS:
        raise ValueError(f"{directory} holds an unknown index kind {kind!r}")
    return INDEX_KINDS[kind].load(directory)
