"""The numpy forward passes of the query tower and the ranker reproduce the SavedModels'
TensorFlow outputs: on a tiny trained serving unit (known, unknown and anonymous new
users; empty, padded, overlong and unknown recent items) and on freshly built models."""

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from test_models import _frames  # the generated frames the model tests train on

from hyperrec.models.two_tower import ITEM_INPUTS, NEW_USER, USER_INPUTS, as_new_users

ATOL = 1e-4


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    """A tiny serving unit (towers trained once, a ranker on their candidates, the index),
    loaded with each backend. Built directly rather than through fit_models, which trains
    the towers twice and saves the item tower: a third of the time."""
    from hyperrec.models.coengagement import CoEngagement
    from hyperrec.models.ranking import RANKER_INPUTS, RankerConfig, ranker_rows, train_ranker
    from hyperrec.models.recommender import Recommender, created_seconds, export_candidates
    from hyperrec.models.two_tower import TwoTowerConfig, embed, train_two_tower

    train, items = _frames(rows=2_000)
    train["request_ts"] = 1_704_067_200 + 60 * np.arange(len(train))
    items["created_ts"] = pd.Timestamp("2023-12-01", tz="UTC") + pd.to_timedelta(np.arange(len(items)) % 20, unit="D")
    out = tmp_path_factory.mktemp("unit")
    cfg, ranker_cfg = TwoTowerConfig(epochs=2, batch_size=64, embedding_dim=16), RankerConfig(candidates=20, epochs=1)
    model = train_two_tower(train, items, cfg)
    model.user_tower.save(out / "user_tower", save_format="tf")
    item_emb = embed(model.item_tower, items, ITEM_INPUTS)
    export_candidates(out, items, item_emb)
    co = CoEngagement.fit(train, items, half_life=cfg.recency_half_life)
    co.save(out / "coengagement.npz")

    # ranker examples: each user's top candidates at their first and last event (no history,
    # a full one), labelled by an engagement in the training data
    queries = pd.concat([train.drop_duplicates("user_id", keep=keep) for keep in ("first", "last")], ignore_index=True)
    scores = embed(model.user_tower, queries, USER_INPUTS) @ item_emb.T
    cand = np.argsort(-scores, axis=1)[:, :ranker_cfg.candidates]
    rows = ranker_rows(co, created_seconds(items), queries, cand, np.take_along_axis(scores, cand, 1))
    later = train.groupby("user_id")["item_id"].agg(set)
    ids = items["item_id"].to_numpy()
    labels = np.array([[ids[c] in later[u] for c in row] for u, row in zip(queries["user_id"], cand)]).reshape(-1)
    ranker = train_ranker({c: rows[c] for c in RANKER_INPUTS}, labels, ranker_cfg)
    ranker.save(out / "ranker", save_format="tf")
    (out / "ranker_config.json").write_text(json.dumps(asdict(ranker_cfg)))
    return {"train": train, "items": items, "numpy": Recommender(out), "tf": Recommender(out, backend="tf")}


def _users(train: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Rows covering the input edge cases, then the same rows as anonymous new users."""
    ids = items["item_id"].tolist()
    users = train.drop_duplicates("user_id").head(8).reset_index(drop=True)
    users = users.astype({c: np.float32 for c, kind in USER_INPUTS.items() if kind in ("int", "float")})
    users.at[0, "recent_items"] = []  # no history
    users.at[1, "recent_items"] = ids[:3]  # short list: padded with ""
    users.at[2, "recent_items"] = ["no-such-item", ids[4], "", "also-unknown"]  # unknown ids and an empty id
    users.at[3, "recent_items"] = ids[:30]  # longer than the model's window: truncated
    users.at[4, "user_id"] = "never-seen-user"
    users.at[5, "user_id"] = NEW_USER
    users.at[6, "age_band"] = "unseen-band"  # a profile value outside its vocabulary
    users.loc[7, ["hour_of_day", "day_of_week", "views_1d", "clicks_7d"]] = [31, -2, -5, 3.7]  # clipped / floored
    users.at[7, "recent_items"] = ["no-such-item"] * 4  # nothing known: pools to zeros
    new = as_new_users(users, [[], ids[5:7], ["no-such-item"], ids[:25], [], [], ids[9:10], []])
    return pd.concat([users, new], ignore_index=True)


def test_numpy_backend_matches_tensorflow(unit):
    rec, ref = unit["numpy"], unit["tf"]
    assert rec.backend == "numpy" and ref.backend == "tf"
    users = _users(unit["train"], unit["items"])

    queries, expected = rec.user_embeddings(users), ref.user_embeddings(users)
    assert queries.dtype == np.float32 and queries.shape == expected.shape == (len(users), 16)
    assert np.abs(queries - expected).max() < ATOL
    # the known users really are known and the rest are not: both paths were exercised
    assert users["user_id"].isin(rec.known_users).sum() == 6

    candidates, scores = ref.search(expected, ref.n_candidates, [set(r) for r in users["recent_items"]])
    logits, expected_logits = rec.rank(users, candidates, scores), ref.rank(users, candidates, scores)
    assert logits.shape == expected_logits.shape == candidates.shape
    assert np.abs(logits - expected_logits).max() < ATOL

    for rank in (True, False):
        got, got_scores = rec.recommend(users, k=5, rank=rank)
        want, want_scores = ref.recommend(users, k=5, rank=rank)
        assert got == want
        assert all(np.abs(a - b).max() < ATOL for a, b in zip(got_scores, want_scores))


def test_serving_batches_as_dicts_of_arrays(unit):
    """The model server's path: a dict of column arrays, one or two rows."""
    rec, ref = unit["numpy"], unit["tf"]
    users = _users(unit["train"], unit["items"])
    for rows in (users.iloc[[0]], users.iloc[[2, 12]]):
        batch = {c: (list(rows[c]) if c == "recent_items" else rows[c].to_numpy()) for c in USER_INPUTS}
        assert np.abs(rec.user_embeddings(batch) - ref.user_embeddings(batch)).max() < ATOL


def test_a_model_without_a_numpy_twin_is_served_through_tf(unit, monkeypatch, caplog):
    from hyperrec.models import numpy_forward
    from hyperrec.models.recommender import Recommender

    def unsupported(model, spec=None):
        raise NotImplementedError("no numpy forward for layer 'x' (Attention)")
    monkeypatch.setattr(numpy_forward.NumpyRanker, "from_keras", unsupported)
    rec = Recommender(unit["numpy"].model_dir)
    assert rec.backend == "tf" and "Attention" in caplog.text
    users = _users(unit["train"], unit["items"])
    assert rec.recommend(users, k=5)[0] == unit["tf"].recommend(users, k=5)[0]


def test_input_arrays_are_the_towers_tensors(unit):
    from hyperrec.models.two_tower import tensors

    users = _users(unit["train"], unit["items"])
    ours, theirs = unit["numpy"]._embed.arrays(users), tensors(users, USER_INPUTS)
    assert ours.keys() == theirs.keys()
    for col in ours:
        assert ours[col].dtype == theirs[col].dtype and np.array_equal(ours[col], theirs[col]), col


def test_freshly_built_models_match_keras():
    """Before a save/load round trip the graph holds real slices, tensors and tfrs' own
    Cross class instead of their revived forms: the numpy pass reads both."""
    import tensorflow as tf

    from hyperrec.models.numpy_forward import NumpyRanker, NumpyUserTower
    from hyperrec.models.ranking import RANKER_INPUTS, RankerConfig, build_ranker
    from hyperrec.models.two_tower import TwoTowerConfig, build_towers, tensors

    tf.keras.utils.set_random_seed(3)
    train, items = _frames(rows=300)
    user_tower, _ = build_towers(train, items, TwoTowerConfig(embedding_dim=8, text_tokens=200))
    users = _users(train, items)
    # weights far from their initialisation, so every input's path moves the output
    for w in user_tower.weights:
        if w.dtype == tf.float32 and w.trainable:
            w.assign(tf.random.normal(w.shape, stddev=0.5))
    want = user_tower({k: tf.constant(v) for k, v in tensors(users, USER_INPUTS).items()}, training=False).numpy()
    assert np.abs(NumpyUserTower.from_keras(user_tower, USER_INPUTS)(users) - want).max() < ATOL

    rng = np.random.default_rng(0)
    rows = {c: rng.normal(0, 1, 300).astype(np.float32) for c in RANKER_INPUTS}
    rows["hour_of_day"] = rng.integers(-2, 30, 300).astype(np.float32)
    ranker = build_ranker(rows, RankerConfig())
    for w in ranker.trainable_weights:
        w.assign(tf.random.normal(w.shape, stddev=0.3))
    want = ranker({c: tf.constant(v) for c, v in rows.items()}, training=False).numpy()
    got = NumpyRanker.from_keras(ranker)(rows)  # spec from the model's own inputs
    assert got.shape == want.shape == (300,) and np.abs(got - want).max() < ATOL


def test_exact_gelu_and_unsupported_layers():
    import tensorflow as tf

    from hyperrec.models.numpy_forward import NumpyModel, _activation

    x = np.linspace(-12, 12, 2001, dtype=np.float32)
    assert np.abs(_activation("gelu", "t")(x) - tf.keras.activations.gelu(tf.constant(x)).numpy()).max() < 1e-6

    inp = tf.keras.Input(shape=(3,), name="v")
    model = tf.keras.Model({"v": inp}, tf.keras.layers.LayerNormalization()(inp))
    with pytest.raises(NotImplementedError, match="LayerNormalization"):
        NumpyModel.from_keras(model)
    model = tf.keras.Model({"v": inp}, tf.math.reduce_logsumexp(inp, axis=-1))
    with pytest.raises(NotImplementedError, match="reduce_logsumexp"):
        NumpyModel.from_keras(model)


def test_forward_pass_module_does_not_import_tensorflow():
    code = "import sys, hyperrec.models.numpy_forward; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
