"""The two-stage model's parts on small generated frames (no feature store): towers export
self-contained, the recent-items sequence moves the query with no retraining, new items
embed from content, the co-engagement table and the list metrics."""

import numpy as np
import pandas as pd
import pytest

from hyperrec.evaluation.metrics import coverage, intra_list_diversity
from hyperrec.models.coengagement import CoEngagement
from hyperrec.models.two_tower import USER_INPUTS


def _frames(n_users=40, n_items=60, rows=1_500, seed=0):
    rng = np.random.default_rng(seed)
    cats = np.array(["red", "green", "blue"])
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(n_items)],
                          "category": cats[np.arange(n_items) % 3], "brand": "acme", "price_bucket": 3,
                          "title": [f"item {j}" for j in range(n_items)]})
    items["description"] = items["category"] + " thing number " + items["item_id"]
    taste = rng.integers(0, 3, n_users)  # each user likes one colour
    users = rng.integers(0, n_users, rows)
    picks = np.array([rng.choice(np.flatnonzero(np.arange(n_items) % 3 == taste[u])) for u in users])
    train = pd.DataFrame({"user_id": [f"u{u}" for u in users], "item_id": items["item_id"].to_numpy()[picks]})
    train = train.merge(items.drop(columns="title"), on="item_id", how="left")
    train["recent_items"] = (train.groupby("user_id")["item_id"]
                             .transform(lambda s: pd.Series([list(s.iloc[max(0, i - 5):i][::-1])
                                                             for i in range(len(s))], index=s.index)))
    for col in ("age_band", "region"):
        train[col] = "x"
    for col, kind in USER_INPUTS.items():
        if kind in ("int", "float") and col not in train:
            train[col] = 0
    return train, items


def test_coengagement_prefers_items_engaged_together(tmp_path):
    pairs = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "y", "z"]})
    items = pd.DataFrame({"item_id": ["x", "y", "z"], "category": ["k", "k", "m"]})
    co = CoEngagement.fit(pairs, items)
    f = co.features([["x"]], np.array([[1, 2]]))  # candidates y, z for a user who just engaged with x
    assert f["coengagement"][0, 0] > f["coengagement"][0, 1] == 0.0
    assert f["category_share"][0].tolist() == [1.0, 0.0]
    co.save(tmp_path / "co.npz")
    again = CoEngagement.load(tmp_path / "co.npz")
    assert np.allclose(again.features([["x"]], np.array([[1, 2]]))["coengagement"], f["coengagement"])


def test_coengagement_features_match_their_sparse_algebra_definition():
    """The batched index arithmetic equals the textbook form: H (users x items, recency
    weights normalised per user) times the neighbour table, read at the candidates."""
    import scipy.sparse as sp

    from hyperrec.models.coengagement import recency_weights

    rng = np.random.default_rng(4)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(60)], "category": rng.choice(list("abcd"), 60)})
    pairs = pd.DataFrame({"user_id": rng.integers(0, 80, 900).astype(str),
                          "item_id": items["item_id"].to_numpy()[rng.integers(0, 60, 900)]})
    co = CoEngagement.fit(pairs, items, top_m=10)
    recent = [["i1", "i2", "unknown", "i1"], [], ["i7"], [f"i{j}" for j in rng.integers(0, 60, 25)]]
    candidates = rng.integers(0, 60, (4, 15))
    candidates[1, -3:] = -1
    got = co.features(recent, candidates)
    w = recency_weights(co.half_life)
    H = np.zeros((4, 60))
    for r, row in enumerate(recent):
        for pos, item in enumerate(row[:len(w)]):
            if item in co._position:
                H[r, co._position[item]] += w[pos]
    H /= np.maximum(H.sum(1, keepdims=True), 1e-9)
    valid = candidates >= 0
    safe = np.where(valid, candidates, 0)
    onehot = np.eye(co.categories.max() + 1)[co.categories]
    expected = {"coengagement": np.take_along_axis(H @ sp.csr_matrix.toarray(co.neighbours), safe, 1),
                "category_share": np.take_along_axis(H @ onehot @ onehot.T, safe, 1),
                "item_log_count": np.log1p(co.counts[safe])}
    for name, want in expected.items():
        np.testing.assert_allclose(got[name], np.where(valid, want, 0), rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(got["log_history_length"][:, 0], np.log1p((H > 0).sum(1)), rtol=1e-6)


def test_list_metrics():
    category = pd.Series({"a": 1, "b": 1, "c": 2})
    assert coverage([["a", "b"], ["a"]], 4) == 0.5
    assert intra_list_diversity([["a", "b"]], category) == 0.0
    assert intra_list_diversity([["a", "c"]], category) == 1.0


@pytest.mark.slow
def test_towers_export_whole_and_react_to_recent_items(tmp_path):
    import tensorflow as tf

    from hyperrec.models.two_tower import (
        ITEM_INPUTS,
        TwoTowerConfig,
        compiled,
        embed,
        export_towers,
        train_two_tower,
    )

    train, items = _frames()
    model = train_two_tower(train, items, TwoTowerConfig(epochs=3, batch_size=64, embedding_dim=16))
    item_emb = export_towers(model, items, TwoTowerConfig(), tmp_path)
    assert np.isfinite(item_emb).all() and item_emb.shape == (len(items), 16)

    # the exported tower reads raw values: same output as the in-memory one
    loaded = tf.keras.models.load_model(tmp_path / "user_tower", compile=False)
    sample = train.head(8)
    assert np.allclose(compiled(loaded, USER_INPUTS)(sample), embed(model.user_tower, sample, USER_INPUTS), atol=1e-5)

    # a user who just engaged with red items is pulled toward red items, no retraining
    user = train.head(1).copy()
    red = items.loc[items["category"] == "red", "item_id"].tolist()[:5]
    blue = items.loc[items["category"] == "blue", "item_id"].tolist()[:5]
    is_red = (items["category"] == "red").to_numpy()
    scores = {}
    for name, recent in (("red", red), ("blue", blue)):
        user.at[user.index[0], "recent_items"] = recent
        q = compiled(loaded, USER_INPUTS)(user)[0]
        scores[name] = (item_emb[is_red] @ q).mean() - (item_emb[~is_red] @ q).mean()
    assert scores["red"] > scores["blue"]

    # a brand-new item embeds from its content (finite, and closest to its own colour)
    new = pd.DataFrame({"item_id": ["never-seen"], "category": ["red"], "brand": ["acme"], "price_bucket": [3],
                        "description": ["red thing number new"]})
    v = embed(model.item_tower, new, ITEM_INPUTS)[0]
    assert np.isfinite(v).all()
    assert (item_emb[is_red] @ v).mean() > (item_emb[~is_red] @ v).mean()


@pytest.mark.slow
def test_warm_start_copies_weights_across_changed_vocabularies(tmp_path):
    from hyperrec.models.two_tower import (
        ITEM_INPUTS,
        WARM_START_DIR,
        TwoTowerConfig,
        build_towers,
        embed,
        export_towers,
        load_tower_weights,
        train_two_tower,
    )

    train, items = _frames()
    cfg = TwoTowerConfig(epochs=2, batch_size=64, embedding_dim=16)
    old = train_two_tower(train, items, cfg)
    before = export_towers(old, items, cfg, tmp_path)

    # the next run knows one more item (new id, new words) and one more user
    extra = pd.DataFrame({"item_id": ["i-new"], "category": ["red"], "brand": ["acme"], "price_bucket": [3],
                          "title": ["new"], "description": ["red zebra gadget"]})
    items2 = pd.concat([extra, items], ignore_index=True)  # shifts every vocabulary position
    train2 = pd.concat([train, train.head(1).assign(user_id="u-new")], ignore_index=True)
    user_tower, item_tower = build_towers(train2, items2, cfg)
    copied = load_tower_weights(item_tower, tmp_path / WARM_START_DIR)
    assert copied["skipped"] == 0 and copied["rows"] >= len(items)
    load_tower_weights(user_tower, tmp_path / WARM_START_DIR)
    after = embed(item_tower, items, ITEM_INPUTS)
    assert np.allclose(after, before, atol=1e-5)  # every known item embeds exactly as before


@pytest.mark.slow
def test_fit_models_is_retrieval_then_ranking_then_the_serving_unit(tmp_path):
    """fit_models composes the pipeline's three steps into the folder Recommender loads."""
    import json

    from hyperrec.models.ranking import RankerConfig
    from hyperrec.models.recommender import Recommender
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.training.fit import fit_models

    train, items = _frames(rows=2_000)
    ts = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(len(train)), unit="min")
    train["event_timestamp"], train["request_ts"] = ts, ts.astype("int64") // 10**9
    items["created_ts"] = pd.Timestamp("2023-12-01", tz="UTC")
    data = tmp_path / "data"
    data.mkdir()
    train.to_parquet(data / "train.parquet", index=False)
    items.to_parquet(data / "items.parquet", index=False)

    ranker_cfg = RankerConfig(candidates=20, epochs=1)
    report = fit_models(data, tmp_path / "unit", TwoTowerConfig(epochs=2, batch_size=64, embedding_dim=16),
                        ranker_cfg, log=lambda *_: None)
    unit = tmp_path / "unit"
    assert {p.name for p in unit.iterdir()} == {"user_tower", "item_tower", "warm_start", "config.json",
                                                "coengagement.npz", "ranker", "ranker_config.json", "candidates.npz",
                                                "index", "items.parquet", "training.json", "content.npz"}
    assert json.loads((unit / "training.json").read_text()) == report
    assert report["index_kind"] == "brute" and report["index_items"] == len(items)
    assert 1 <= report["epochs"] <= 2 and report["ranker_examples"] == report["ranking_examples"] > 0

    rec = Recommender(unit)
    # the items' words are exported in the candidates' order
    assert len(rec.content.tokens) == len(rec.item_ids)
    category = rec.catalog["category"].reindex(rec.item_ids).to_numpy()
    at = next(i for i, c in enumerate(category) if c in rec.content.vocabulary)
    assert rec.content.vectors(np.array([at]))[0, rec.content.vocabulary.index(category[at])] > 0
    # a unit exported before the words were (no content.npz) tokenizes its catalog on load: the same words
    saved = rec.content
    (unit / "content.npz").rename(tmp_path / "content.npz")
    rebuilt = Recommender(unit).content
    assert rebuilt.vocabulary == saved.vocabulary
    np.testing.assert_array_equal(rebuilt.tokens, saved.tokens)
    (tmp_path / "content.npz").rename(unit / "content.npz")
    users = train.drop_duplicates("user_id").head(3)
    ranked, scores = rec.recommend(users, k=5)
    assert [len(r) for r in ranked] == [5, 5, 5] and all(s[0] >= s[-1] for s in scores)
    assert all(not set(r) & set(seen) for r, seen in zip(ranked, users["recent_items"]))


def test_ranker_refuses_examples_built_for_another_candidate_count(tmp_path):
    from hyperrec.models.ranking import RANKER_INPUTS, RankerConfig
    from hyperrec.training.fit import RANKING_EXAMPLES, fit_ranking

    np.savez(tmp_path / RANKING_EXAMPLES, label=np.zeros(4, bool), _candidates=np.asarray(100),
             _short_history_share=np.asarray(1.0), **{c: np.zeros(4, np.float32) for c in RANKER_INPUTS})
    with pytest.raises(ValueError, match="candidates=100"):
        fit_ranking(tmp_path, tmp_path / "ranker", RankerConfig(candidates=50))


def test_ranker_batches_hold_every_row_once_per_epoch_reshuffled():
    from hyperrec.models.ranking import shuffled_batches

    rows = np.arange(1_000)
    ds = shuffled_batches({"row": rows, "double": 2.0 * rows}, size=64, seed=3)
    epochs = [[{k: v.numpy() for k, v in batch.items()} for batch in ds] for _ in range(2)]
    for batches in epochs:
        assert sorted(len(b["row"]) for b in batches) == [1_000 - 15 * 64] + [64] * 15  # one short batch
        seen = np.concatenate([b["row"] for b in batches])
        assert sorted(seen) == list(rows)
        assert all((b["double"] == 2.0 * b["row"]).all() for b in batches)  # columns stay aligned
    first, second = (np.concatenate([b["row"] for b in batches]) for batches in epochs)
    assert not (first == second).all()  # the batch order changes between epochs
    assert not (first[:64] == np.arange(64)).all()  # and the rows were shuffled into batches
