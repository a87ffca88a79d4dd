"""Candidate index: exactness of brute force, exclusion, IVF recall, save/load, auto choice."""

import numpy as np
import pytest

from hyperrec.bench.index import generate_catalog, print_index_table, recall_at_k
from hyperrec.models.index import BruteForceIndex, CandidateIndex, IvfIndex, build_index, load_index


@pytest.fixture(scope="module")
def catalog():
    return generate_catalog(5_000, dim=32, n_queries=200, seed=1)


@pytest.fixture(scope="module")
def ivf(catalog):
    return IvfIndex.build(catalog[0])


def test_brute_force_matches_full_sort(catalog):
    items, queries = catalog
    ids, scores = BruteForceIndex(items).search(queries[:20], 50)
    full = queries[:20] @ items.T
    naive = np.argsort(-full, axis=1)[:, :50]
    np.testing.assert_array_equal(ids, naive)
    np.testing.assert_allclose(scores, np.take_along_axis(full, naive, axis=1), rtol=1e-5)
    assert ids.dtype == np.int64 and scores.shape == (20, 50)


def test_brute_force_single_vector_and_k_above_catalog():
    items = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    ids, scores = BruteForceIndex(items).search(items[0], 10)
    assert ids.shape == (1, 10)
    assert sorted(ids[0, :7]) == list(range(7)) and (ids[0, 7:] == -1).all() and np.isneginf(scores[0, 7:]).all()


@pytest.mark.parametrize("kind", ["brute", "ivf"])
def test_exclusion(catalog, kind, ivf):
    items, queries = catalog
    index = ivf if kind == "ivf" else BruteForceIndex(items)
    q = queries[:10]
    top, _ = index.search(q, 100)
    exclude = [row[:30] for row in top]  # hide each user's 30 best items
    exclude[0] = np.concatenate([exclude[0], [len(items) + 5]])  # unknown ids are harmless
    ids, scores = index.search(q, 100, exclude=exclude)
    assert ids.shape == (10, 100) and (ids >= 0).all()
    for row, hidden in zip(ids, exclude):
        assert not np.isin(row, hidden).any()
        assert len(set(row.tolist())) == 100
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # still sorted by score
    if kind == "brute":  # exact: the next 100 after the hidden 30
        np.testing.assert_array_equal(ids, index.search(q, 130)[0][:, 30:])


def test_exclusion_leaves_fewer_than_k():
    items = np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32)
    for index in (BruteForceIndex(items), IvfIndex.build(items, nlist=2, nprobe=1)):
        ids, scores = index.search(items[:1], 100, exclude=[np.arange(30)])
        assert (ids[0, :90] >= 30).all() and (ids[0, 90:] == -1).all(), index.kind
        assert np.isneginf(scores[0, 90:]).all()


def test_ivf_recall(catalog, ivf):
    items, queries = catalog
    exact, _ = BruteForceIndex(items).search(queries, 100)
    found, _ = ivf.search(queries, 100)
    assert recall_at_k(found, exact) >= 0.95
    assert recall_at_k(exact, exact) == 1.0


def test_save_load_round_trip(tmp_path, catalog, ivf):
    items, queries = catalog
    for index in (BruteForceIndex(items), ivf):
        saved = index.save(tmp_path / index.kind)
        loaded = load_index(saved)
        assert type(loaded) is type(index) and len(loaded) == len(items) and loaded.dim == items.shape[1]
        a, b = index.search(queries[:50], 100), loaded.search(queries[:50], 100)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert load_index(tmp_path / "ivf").nprobe == ivf.nprobe
    with pytest.raises(ValueError):
        IvfIndex.load(tmp_path / "brute")


def test_build_index_auto(catalog):
    items, _ = catalog
    small = build_index(items, kind="auto")
    assert isinstance(small, BruteForceIndex) and isinstance(small, CandidateIndex)
    big = build_index(items, kind="auto", brute_max_items=1_000, nprobe=4)
    assert isinstance(big, IvfIndex) and big.nprobe == 4 and isinstance(big, CandidateIndex)
    with pytest.raises(ValueError):
        build_index(items, kind="scann")


def test_bench_rows_and_table():
    from rich.console import Console

    from hyperrec.bench.index import bench_index

    rows = bench_index(sizes=(3_000,), dim=16, queries=30, k=100, warmup=2)
    assert [r["index"] for r in rows] == ["brute", "ivf"]
    assert rows[0]["recall@100"] == 1.0 and rows[1]["recall@100"] >= 0.9
    assert {"items", "index", "recall@100", "p50_ms", "p99_ms", "build_s"} <= rows[0].keys()
    console = Console(record=True, width=160)
    print_index_table(rows, console)
    assert "ivf" in console.export_text()
