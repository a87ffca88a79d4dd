"""Re-ranking (MMR, filters, popular-in-context, explanations, the exploration slot) and the
LinUCB bandit behind it: pure numpy, no model, fast."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from hyperrec.online.bandit import LinUCB
from hyperrec.online.rerank import (
    EXPLORATION_DIM,
    CatalogIndex,
    RerankConfig,
    explain,
    explain_batch,
    exploration_features,
    exploration_features_batch,
    filter_excluded,
    mmr,
    popular_in_context,
    rerank,
    rerank_batch,
)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def catalog():
    """200 items in 8 dims, and one user's 100 candidates: the last 7 are padding."""
    rng = np.random.default_rng(7)
    emb = _unit(rng.normal(size=(200, 8)))
    candidates = rng.choice(200, 100, replace=False)
    scores = rng.normal(size=100)
    candidates[-7:], scores[-7:] = -1, -np.inf
    return emb, candidates, scores


@pytest.fixture
def clusters():
    """Three tight clusters; the top 4 scores are all near-duplicates in cluster 0."""
    rng = np.random.default_rng(3)
    centers = _unit(np.eye(3, 16) * 5 + rng.normal(size=(3, 16)) * 0.1)
    emb = _unit(np.repeat(centers, 4, axis=0) + rng.normal(size=(12, 16)) * 0.02)
    candidates = np.arange(12)
    scores = np.array([1.0, 0.99, 0.98, 0.97, 0.9, 0.89, 0.88, 0.87, 0.8, 0.79, 0.78, 0.77])
    return emb, candidates, scores


def _intra_list_similarity(positions: np.ndarray, emb: np.ndarray) -> float:
    e = emb[positions]
    sim = e @ e.T
    n = len(positions)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


# --- MMR and filters -------------------------------------------------------------------

def test_mmr_with_lambda_one_is_the_top_k_by_score(catalog):
    emb, candidates, scores = catalog
    expected = candidates[np.argsort(-scores, kind="stable")][:10]
    np.testing.assert_array_equal(mmr(candidates, scores, emb, 10, 1.0), expected)


def test_lower_lambda_diversifies_near_duplicates(clusters):
    emb, candidates, scores = clusters
    top = mmr(candidates, scores, emb, 4, 1.0)
    np.testing.assert_array_equal(top, [0, 1, 2, 3])  # the near-duplicate cluster
    diverse = mmr(candidates, scores, emb, 4, 0.5)
    assert diverse[0] == 0  # the most relevant item still leads
    assert {p // 4 for p in diverse.tolist()} == {0, 1, 2}  # every cluster is represented
    assert _intra_list_similarity(diverse, emb) < _intra_list_similarity(top, emb) - 0.3
    ils = [_intra_list_similarity(mmr(candidates, scores, emb, 4, lam), emb) for lam in (1.0, 0.95, 0.7, 0.5)]
    assert ils == sorted(ils, reverse=True) and ils[-1] < ils[0]


def test_padding_is_never_returned(catalog):
    emb, candidates, scores = catalog
    scores = scores.copy()
    scores[-3:] = 5.0  # padding with a (wrong) finite score is still padding
    for lam in (1.0, 0.85, 0.3):
        picked = mmr(candidates, scores, emb, 200, lam)
        assert len(picked) == 93 and (picked >= 0).all() and len(set(picked.tolist())) == 93
    assert len(mmr(np.full(5, -1), np.full(5, -np.inf), emb, 3, 0.8)) == 0
    assert len(mmr(candidates, scores, emb, 0, 0.8)) == 0


def _reference_mmr(candidates, scores, emb, k, lam):
    """MMR written out the slow, obvious way: the definition the batched code must match."""
    ok = [i for i in range(len(candidates)) if candidates[i] >= 0 and np.isfinite(scores[i])]
    ok.sort(key=lambda i: -scores[i])
    if not ok:
        return []
    lo, hi = min(scores[i] for i in ok), max(scores[i] for i in ok)
    rel = {i: (scores[i] - lo) / (hi - lo) if hi > lo else 1.0 for i in ok}
    picked = []
    while ok and len(picked) < k:
        def value(i):
            sim = max((float(emb[candidates[i]] @ emb[candidates[j]]) for j in picked), default=0.0)
            return lam * rel[i] - (1 - lam) * sim if picked else rel[i]
        best = max(ok, key=value)  # ties: the first in score order
        picked.append(best)
        ok.remove(best)
    return [int(candidates[i]) for i in picked]


def test_batched_mmr_matches_the_definition_row_by_row(catalog):
    """A batch mixing full rows, padded rows and an all-padding row gives each row what
    MMR by its definition gives it alone."""
    emb, candidates, scores = catalog
    rng = np.random.default_rng(11)
    rows_c = np.stack([candidates, rng.permutation(candidates), np.full(100, -1), candidates])
    rows_s = np.stack([scores, rng.normal(size=100), np.full(100, -np.inf), scores[::-1].copy()])
    rows_s[1][rows_c[1] < 0] = -np.inf
    rows_s[3][rows_c[3] < 0] = -np.inf
    for lam in (1.0, 0.85, 0.5):
        out = rerank_batch(rows_c, rows_s, emb, [10, 12, 5, 3], RerankConfig(mmr_lambda=lam, exploration_slot=None))
        for r, k in enumerate([10, 12, 5, 3]):
            assert out[r].positions.tolist() == _reference_mmr(rows_c[r], rows_s[r], emb, k, lam)
            assert out[r].positions.tolist() == mmr(rows_c[r], rows_s[r], emb, k, lam).tolist()


def test_batched_features_and_explanations_match_one_user_at_a_time(catalog):
    emb, candidates, scores = catalog
    rng = np.random.default_rng(5)
    index = CatalogIndex.build(rng.integers(0, 500, 200), np.array(list("abcde"))[rng.integers(0, 5, 200)])
    rows_c = np.stack([candidates, rng.permutation(candidates)])
    rows_s = np.where(rows_c >= 0, np.stack([scores, rng.normal(size=100)]), -np.inf)
    recent = np.array([[3, 17, -1], [-1, -1, -1]])
    x = exploration_features_batch(rows_c, rows_s, index, recent)
    recommended = np.array([[5, 6, 7], [8, 9, -1]])
    why = explain_batch(recommended, recent, emb)
    for r in range(2):
        np.testing.assert_array_equal(x[r], exploration_features(rows_c[r], rows_s[r], index,
                                                                 recent[r][recent[r] >= 0]))
        np.testing.assert_array_equal(why[r][recommended[r] >= 0],
                                      explain(recommended[r][recommended[r] >= 0], recent[r][recent[r] >= 0], emb))
    assert (why[1] == -1).all() and why[0][0] in (3, 17)


def test_excluded_items_are_filtered_out(catalog):
    emb, candidates, scores = catalog
    original = scores.copy()
    banned = set(candidates[np.argsort(-scores)[:5]].tolist())  # the five best
    kept, filtered = filter_excluded(candidates, scores, banned)
    np.testing.assert_array_equal(scores, original)  # the caller's scores are untouched
    assert np.isneginf(filtered[np.isin(kept, list(banned))]).all()
    for lam in (1.0, 0.85):
        assert not banned & set(mmr(kept, filtered, emb, 20, lam).tolist())
    assert filter_excluded(candidates, scores, set())[1] is scores


# --- popular in context, explanations -------------------------------------------------------

@pytest.fixture
def popular():
    popularity = np.array([50, 40, 30, 20, 10, 5, 60, 1, 70, 0], np.float32)
    categories = np.array(["a", "b", "a", "b", "c", "a", "b", "c", "c", "a"], dtype=object)
    return CatalogIndex.build(popularity, categories)


def test_popular_in_context_respects_the_category(popular):
    catalog = popular
    np.testing.assert_array_equal(popular_in_context(catalog, 3, set()), [8, 6, 0])
    np.testing.assert_array_equal(popular_in_context(catalog, 3, {0}, category="a"), [2, 5, 9])
    np.testing.assert_array_equal(popular_in_context(catalog, 2, set(), category="b"), [6, 1])


def test_popular_in_context_fills_a_small_category_from_overall(popular):
    catalog = popular
    # "c" has 3 items (8, 4, 7), one excluded: the two left first, then the overall best not yet listed
    top = popular_in_context(catalog, 5, {4}, category="c")
    np.testing.assert_array_equal(top, [8, 7, 6, 0, 1])
    # an unknown category is all fill; k beyond the catalog returns what there is, once each
    np.testing.assert_array_equal(popular_in_context(catalog, 2, set(), category="zzz"), [8, 6])
    everything = popular_in_context(catalog, 50, {9}, category="a")
    assert sorted(everything.tolist()) == list(range(9))


def test_explain_picks_the_most_similar_recent_item():
    rng = np.random.default_rng(0)
    base = _unit(rng.normal(size=(3, 32)))
    # items 0..2 are recent; 3..5 are recommendations close to 2, 0, 1 respectively
    emb = _unit(np.vstack([base, base[[2, 0, 1]] + rng.normal(size=(3, 32)) * 0.05]))
    np.testing.assert_array_equal(explain(np.array([3, 4, 5]), np.array([0, 1, 2]), emb), [2, 0, 1])
    np.testing.assert_array_equal(explain(np.array([3, 4, 5]), np.array([], np.int64), emb), [-1, -1, -1])


# --- the exploration slot --------------------------------------------------------------

class _Recording:
    """A bandit stub that picks the last arm offered and remembers what it was offered."""

    def __init__(self):
        self.offered = None

    def choose(self, X):
        self.offered = X
        return len(X) - 1, np.zeros(len(X))


def _features(candidates, scores, n_items=200):
    rng = np.random.default_rng(1)
    popularity = rng.integers(0, 500, n_items).astype(np.float32)
    categories = np.array(list("abcde"), dtype=object)[rng.integers(0, 5, n_items)]
    return exploration_features(candidates, scores, CatalogIndex.build(popularity, categories),
                                np.array([candidates[0]]))


def test_exploration_features_are_bounded_and_documented(catalog):
    emb, candidates, scores = catalog
    x = _features(candidates, scores)
    assert x.shape == (100, EXPLORATION_DIM) and np.isfinite(x).all()
    assert (x >= 0).all() and (x <= 1).all() and (x[:, 0] == 1).all()
    best = int(np.argmax(scores))
    assert x[best, 1] == 1.0 and x[best, 2] == 0.0 and x[0, 4] == 1.0  # candidate 0 is the recent item
    assert (x[-7:, 1:] == 0).all()  # padding rows carry only the bias


def test_rerank_puts_the_bandits_pick_at_the_slot_from_below_the_top_k(catalog):
    emb, candidates, scores = catalog
    x = _features(candidates, scores)
    k, cfg = 10, RerankConfig(mmr_lambda=0.85, exploration_slot=4, exploration_pool=50)
    bandit = _Recording()
    out = rerank(candidates, scores, emb, k, cfg, bandit=bandit, features=x)
    assert len(out.positions) == k and len(set(out.positions.tolist())) == k and (out.positions >= 0).all()
    assert out.explored_at == 4
    explored = out.positions[4]
    rank_by_score = {int(c): r for r, c in enumerate(candidates[np.argsort(-scores, kind="stable")])}
    assert k <= rank_by_score[int(explored)] < cfg.exploration_pool  # from below the top k, inside the pool
    rest = np.delete(out.positions, 4)
    np.testing.assert_array_equal(rest, mmr(candidates, scores, emb, k - 1, cfg.mmr_lambda))
    assert len(bandit.offered) == cfg.exploration_pool - k - np.sum([rank_by_score[int(p)] >= k for p in rest])
    i = int(np.flatnonzero(candidates == explored)[0])
    np.testing.assert_array_equal(out.explored_x, x[i])
    assert out.scores[4] == scores[i]


def test_rerank_with_a_real_bandit_and_the_edge_cases(catalog):
    emb, candidates, scores = catalog
    x = _features(candidates, scores)
    out = rerank(candidates, scores, emb, 10, RerankConfig(), bandit=LinUCB(EXPLORATION_DIM), features=x)
    assert out.explored_at == 4 and out.explored_x.shape == (EXPLORATION_DIM,)
    # no bandit or no slot: pure MMR, nothing explored
    for cfg, bandit in ((RerankConfig(), None), (RerankConfig(exploration_slot=None), _Recording())):
        plain = rerank(candidates, scores, emb, 10, cfg, bandit=bandit, features=x)
        assert plain.explored_at == -1 and plain.explored_x is None
        np.testing.assert_array_equal(plain.positions, mmr(candidates, scores, emb, 10, cfg.mmr_lambda))
    # the slot is clamped to the list; an empty pool means no exploration
    short = rerank(candidates, scores, emb, 3, RerankConfig(exploration_slot=7), bandit=_Recording(), features=x)
    assert short.explored_at == 2 and len(short.positions) == 3
    none_left = rerank(candidates, scores, emb, 10, RerankConfig(exploration_pool=10), bandit=_Recording(), features=x)
    assert none_left.explored_at == -1 and len(none_left.positions) == 10
    with pytest.raises(ValueError):
        rerank(candidates, scores, emb, 10, RerankConfig(), bandit=_Recording(), features=None)


# --- LinUCB ------------------------------------------------------------------------------

def test_sherman_morrison_matches_the_inverse_of_the_accumulated_matrix():
    rng = np.random.default_rng(0)
    bandit = LinUCB(6, alpha=0.5, ridge=2.0)
    A, b = 2.0 * np.eye(6), np.zeros(6)
    for _ in range(3000):
        x, r = rng.normal(size=6), float(rng.random())
        bandit.update(x, r)
        A += np.outer(x, x)
        b += r * x
    np.testing.assert_allclose(bandit.A_inv, np.linalg.inv(A), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(bandit.theta, np.linalg.solve(A, b), rtol=1e-6, atol=1e-9)
    assert bandit.updates == 3000
    X = rng.normal(size=(50, 6))
    ucb = X @ np.linalg.solve(A, b) + 0.5 * np.sqrt(np.einsum("ij,jk,ik->i", X, np.linalg.inv(A), X))
    index, bounds = bandit.choose(X)
    np.testing.assert_allclose(bounds, ucb, rtol=1e-6)
    assert index == int(np.argmax(ucb))


@pytest.mark.parametrize("noise", ["gaussian", "bernoulli"])
def test_linucb_learns_a_linear_reward(noise):
    """20 arms with fresh random features each round and a hidden linear expected reward
    (Gaussian noise around it, or a click with that probability, serving-like features with
    a bias and a flag): in the second half LinUCB's regret is a small fraction of a random
    policy's, it shrank with experience, and θ points the hidden way."""
    rng = np.random.default_rng(42)
    dim, arms, rounds = 5, 20, 2000
    if noise == "gaussian":
        theta_star = rng.normal(size=dim)
        theta_star /= np.linalg.norm(theta_star)
    else:
        theta_star = np.array([0.1, 0.4, -0.2, 0.3, 0.2])  # click probability in [0, 1] for these features
    bandit = LinUCB(dim, alpha=0.5 if noise == "gaussian" else 1.0)
    regret, random_regret = np.zeros(rounds), np.zeros(rounds)
    for t in range(rounds):
        if noise == "gaussian":
            X = rng.normal(size=(arms, dim)) / np.sqrt(dim)
        else:
            X = np.column_stack([np.ones(arms), rng.random((arms, dim - 2)), rng.random(arms) < 0.5])
        expected = X @ theta_star
        i, _ = bandit.choose(X)
        reward = expected[i] + rng.normal(scale=0.3) if noise == "gaussian" else float(rng.random() < expected[i])
        bandit.update(X[i], reward)
        regret[t] = expected.max() - expected[i]
        random_regret[t] = expected.max() - expected.mean()  # what a uniformly random pick loses on average
    early, late, late_random = regret[:rounds // 2].sum(), regret[rounds // 2:].sum(), random_regret[rounds // 2:].sum()
    assert late < 0.1 * late_random, (late, late_random)
    assert late < 0.5 * early, (early, late)
    cosine = bandit.theta @ theta_star / np.linalg.norm(bandit.theta) / np.linalg.norm(theta_star)
    assert cosine > 0.9, cosine


def test_state_round_trips_through_save_and_load(tmp_path):
    rng = np.random.default_rng(5)
    bandit = LinUCB(EXPLORATION_DIM, alpha=0.7, ridge=3.0)
    for _ in range(50):
        bandit.update(rng.random(EXPLORATION_DIM), float(rng.integers(0, 2)))
    path = tmp_path / "bandit" / "linucb.json"
    bandit.save(path)
    assert json.loads(path.read_text())["updates"] == 50  # plain JSON
    assert [p.name for p in path.parent.iterdir()] == ["linucb.json"]  # no temporary left behind
    loaded = LinUCB.load(path)
    assert (loaded.dim, loaded.alpha, loaded.ridge, loaded.updates) == (EXPLORATION_DIM, 0.7, 3.0, 50)
    np.testing.assert_array_equal(loaded.A_inv, bandit.A_inv)
    np.testing.assert_array_equal(loaded.b, bandit.b)
    X = rng.random((30, EXPLORATION_DIM))
    np.testing.assert_array_equal(loaded.choose(X)[1], bandit.choose(X)[1])
    assert LinUCB.from_state(json.loads(json.dumps(bandit.state()))).updates == 50
    with pytest.raises(ValueError):
        LinUCB.from_state({**bandit.state(), "b": [0.0]})


def test_concurrent_updates_keep_the_inverse_consistent():
    rng = np.random.default_rng(9)
    dim, threads, per_thread = 4, 8, 250
    contexts = rng.normal(size=(threads, per_thread, dim))
    rewards = rng.random((threads, per_thread))
    bandit = LinUCB(dim)
    done = threading.Event()
    errors = []

    def feedback(t: int) -> None:
        for x, r in zip(contexts[t], rewards[t]):
            bandit.update(x, r)

    def serve() -> None:  # requests keep choosing while feedback arrives
        X = rng.normal(size=(50, dim))
        while not done.wait(0.0005):  # not a busy loop: that would starve the updaters of the GIL
            i, ucb = bandit.choose(X)
            if not np.isfinite(ucb).all() or not 0 <= i < 50:
                errors.append(ucb)

    reader = threading.Thread(target=serve)
    reader.start()
    workers = [threading.Thread(target=feedback, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    reader.join()
    X = contexts.reshape(-1, dim)
    A = np.eye(dim) + X.T @ X
    assert bandit.updates == threads * per_thread and not errors
    np.testing.assert_allclose(bandit.A_inv, np.linalg.inv(A), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(bandit.b, X.T @ rewards.reshape(-1), rtol=1e-9)


def test_the_ablation_experiment_switches_one_mechanism_off_per_arm():
    from hyperrec.online.serving_path import EXPERIMENTS

    ablation = EXPERIMENTS["ablation"]
    full = ablation.arms["full"]
    for name, arm in ablation.arms.items():
        differs = {f for f in ("mmr_lambda", "exploration_slot", "realtime", "recency")
                   if getattr(arm, f) != getattr(full, f)}
        assert len(differs) == (0 if name == "full" else 1), name
    shares = pd.Series([ablation.assign(f"u{i}") for i in range(8_000)]).value_counts(normalize=True)
    assert set(shares.index) == set(ablation.arms) and shares.between(0.17, 0.23).all()
    batch_only = [u for u in (f"u{i}" for i in range(200)) if ablation.batch_only(u)]
    assert batch_only and all(ablation.assign(u) == "no-realtime" for u in batch_only)
    assert not any(EXPERIMENTS["rerank"].batch_only(f"u{i}") for i in range(200))
