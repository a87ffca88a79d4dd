"""Candidate-index benchmark: brute force vs IVF on generated catalogs (`hyperrec bench index`).

Numbers, never assertions: recall@k of each index against exact search, per-query latency at
batch size 1 (as the server calls it), build time, index size and the process's peak RSS.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

import numpy as np

from hyperrec.models.index import BruteForceIndex, build_index


def generate_catalog(n_items: int, dim: int = 64, n_queries: int = 1000, seed: int = 0,
                     n_clusters: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Item and query embeddings shaped like a two-tower model's, not uniform noise.

    Items: a mixture of gaussians — ~sqrt(n) topic centres on the unit sphere, topic sizes
    Zipf-skewed (weight ∝ rank^-0.8), each topic with its own spread (noise norm 0.5–1.1 around a
    unit centre). Directions are then L2-normalised and scaled by a norm that grows with item
    popularity (log of a Zipf rank) times log-normal jitter (σ=0.25): dot-product two-tower models
    give popular items larger norms, which is what makes inner-product search harder than cosine.
    Mean norm is 1, the largest ~3x.
    Queries (users): unit vectors near one topic centre or a blend of two (multi-interest users),
    topics drawn with the same popularity skew, plus noise.
    Returns (items [n_items, dim], queries [n_queries, dim]), float32.
    """
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(16, int(np.sqrt(n_items)))
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weight = 1.0 / np.arange(1, n_clusters + 1) ** 0.8
    weight /= weight.sum()
    spread = (rng.uniform(0.5, 1.1, n_clusters) / np.sqrt(dim)).astype(np.float32)

    topic = rng.choice(n_clusters, n_items, p=weight)
    items = centres[topic] + spread[topic, None] * rng.standard_normal((n_items, dim), dtype=np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    popularity_rank = rng.permutation(n_items) + 1
    norms = np.exp(0.25 * rng.standard_normal(n_items)) * (1 + 0.1 * np.log(n_items / popularity_rank))
    items *= (norms / norms.mean()).astype(np.float32)[:, None]

    pair = rng.choice(n_clusters, (n_queries, 2), p=weight)
    blend = np.where(rng.random((n_queries, 1)) < 0.5, 1.0, rng.random((n_queries, 1))).astype(np.float32)
    queries = blend * centres[pair[:, 0]] + (1 - blend) * centres[pair[:, 1]]
    queries += (0.8 / np.sqrt(dim)) * rng.standard_normal((n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return np.ascontiguousarray(items), np.ascontiguousarray(queries)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k (k = exact.shape[1]); -1 slots never count."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / k for f, e in zip(found, exact)]))


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_index(sizes: Sequence[int] = (10_000, 100_000, 1_000_000), dim: int = 64, queries: int = 1000,
                k: int = 100, seed: int = 0, kinds: Sequence[str] = ("brute", "ivf"), warmup: int = 20,
                progress=None) -> list[dict]:
    """One row per (catalog size, index kind):
    {"items", "index", "recall@{k}", "p50_ms", "p99_ms", "build_s", "index_mb", "max_rss_mb", "params"}.

    Ground truth is exact search in batches; latency is timed one query at a time over `queries`
    queries (after `warmup` untimed ones), and recall is computed from those same single-query
    results. `max_rss_mb` is the process peak so far (it only grows across rows).
    `progress`, if given, is called with a short message per step (e.g. `console.log`).
    """
    say = progress or (lambda _msg: None)
    rows = []
    for n in sizes:
        items, qs = generate_catalog(n, dim=dim, n_queries=queries + warmup, seed=seed)
        warm, qs = qs[:warmup], qs[warmup:]
        exact, _ = BruteForceIndex(items).search(qs, k)
        for kind in kinds:
            say(f"{kind} index over {n:,} items")
            t0 = time.perf_counter()
            index = build_index(items, kind=kind)
            build_s = time.perf_counter() - t0
            for q in warm:
                index.search(q, k)
            found = np.empty((len(qs), k), dtype=np.int64)
            lat = np.empty(len(qs))
            for i, q in enumerate(qs):
                t = time.perf_counter()
                found[i] = index.search(q, k)[0][0]
                lat[i] = time.perf_counter() - t
            ms = lat * 1000
            params = {"nlist": index.nlist, "nprobe": index.nprobe} if kind == "ivf" else {}
            rows.append({"items": n, "index": kind, f"recall@{k}": round(recall_at_k(found, exact), 4),
                         "p50_ms": round(float(np.percentile(ms, 50)), 3),
                         "p99_ms": round(float(np.percentile(ms, 99)), 3),
                         "build_s": round(build_s, 2), "index_mb": round(index.nbytes / 2**20, 1),
                         "max_rss_mb": round(_max_rss_mb()), "params": params})
            del index
    return rows


def print_index_table(rows: list[dict], console) -> None:
    """The rows as a rich table on `console`."""
    from rich.table import Table

    recall_key = next((key for key in rows[0] if key.startswith("recall@")), "recall@100") if rows else "recall@100"
    table = Table(title="Candidate index: exact vs approximate (per-query latency, batch size 1)")
    for col in ("items", "index", recall_key, "p50 ms", "p99 ms", "build s", "index MB", "peak RSS MB", "params"):
        table.add_column(col, justify="left" if col in ("index", "params") else "right")
    for r in rows:
        params = " ".join(f"{key}={val}" for key, val in r.get("params", {}).items())
        table.add_row(f"{r['items']:,}", r["index"], f"{r[recall_key]:.4f}", f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['build_s']:.2f}", f"{r.get('index_mb', 0):.1f}",
                      f"{r.get('max_rss_mb', 0):,}", params)
    console.print(table)
