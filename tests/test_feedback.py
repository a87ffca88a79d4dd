"""The feedback query: moves toward what the user engaged with or found alone lately and
away from the list slots they looked at and passed over, only inside the window, keeping
the query's norm. The re-scoring after ranking: candidates like those recent items rise."""

import numpy as np
import pytest

from hyperrec.features.online_reader import object_column
from hyperrec.features.views import REQUEST_TS
from hyperrec.models.content import ContentTokens
from hyperrec.online.feedback import FeedbackConfig, Reactions, content_rescored, feedback_queries, reacted, rescored
from hyperrec.online.serving_path import Request, apply_request

NOW = 1_800_000_000
DAY = 86_400
ITEMS = {"x": 0, "y": 1, "z": 2}
EMB = np.eye(3, dtype=np.float32)


def rows(items, items_ts, views, views_ts, browsed=None, browsed_ts=None):
    n = len(items)
    return {REQUEST_TS: np.full(n, NOW), "recent_items": object_column(items),
            "recent_items_ts": object_column(items_ts), "recent_views": object_column(views),
            "recent_views_ts": object_column(views_ts),
            "recent_browsed": object_column(browsed or [[]] * n),
            "recent_browsed_ts": object_column(browsed_ts or [[]] * n)}


def test_engaged_passed_over_and_browsed_items_inside_the_window():
    r = rows([["x", "y"]], [[NOW - 10, NOW - 3 * DAY]],
             [["z", "x", "y", "z"]], [[NOW - 5, NOW - 20, NOW - 30, NOW - 40]],
             [["y", "x", "z"]], [[NOW - 7, NOW - 8, NOW - 3 * DAY]])
    reactions = reacted(r, FeedbackConfig(window_s=2 * DAY))
    # y was engaged with too long ago: its fresh view is a pass; x was viewed, then engaged with
    assert reactions.engaged == [["x"]] and reactions.skipped == [["z", "y"]]
    # found alone: y (z's browse is outside the window, x was engaged with)
    assert reactions.browsed == [["y"]]


def test_an_item_found_alone_pulls_the_query_like_an_engaged_one():
    q = np.array([[1.0, 1.0, 1.0]], np.float32)
    moved = feedback_queries(q, rows([[]], [[]], [[]], [[]], [["y"]], [[NOW - 60]]), ITEMS, EMB, FeedbackConfig())
    assert moved[0, 1] > moved[0, 0] == pytest.approx(moved[0, 2])


def test_the_query_moves_toward_engaged_and_away_from_skipped_items_keeping_its_norm():
    q = np.array([[2.0, 2.0, 2.0]], np.float32)
    r = rows([["x"]], [[NOW - 60]], [["x", "z"]], [[NOW - 70, NOW - 80]])
    moved = feedback_queries(q, r, ITEMS, EMB, FeedbackConfig())
    assert np.linalg.norm(moved) == pytest.approx(np.linalg.norm(q), rel=1e-6)
    assert moved[0, 0] > moved[0, 1] > moved[0, 2]  # toward x, away from z, y untouched
    assert moved.dtype == np.float32


def test_nothing_recent_leaves_the_query_exactly_as_it_was():
    q = np.array([[0.3, -0.1, 0.9], [1.0, 0.0, 0.0]], np.float32)
    r = rows([["x"], []], [[NOW - 5 * DAY], []], [["z"], ["unknown-item"]], [[NOW - 3 * DAY], [NOW - 1]])
    np.testing.assert_array_equal(feedback_queries(q, r, ITEMS, EMB, FeedbackConfig(window_s=2 * DAY)), q)


def test_a_sessions_own_items_count_as_engaged_now():
    """apply_request keeps recent_items_ts aligned when a request brings its own items."""
    features = {"user_id": np.array(["u1", "u2"], object), REQUEST_TS: np.array([NOW, NOW]),
                "last_event_ts": np.array([NOW - 100, NOW - 100]),
                "recent_items": object_column([["a", "b"], ["c"]]),
                "recent_items_ts": object_column([[NOW - 100, NOW - 200], [NOW - 300]])}
    cols = apply_request(features, [Request(user_id="u1", recent_items=("z", "b")), Request(user_id="u2")])
    assert list(cols["recent_items"][0]) == ["z", "b", "a"]
    assert list(cols["recent_items_ts"][0]) == [NOW, NOW - 200, NOW - 100]
    assert list(cols["recent_items_ts"][1]) == [NOW - 300]


def test_rescoring_lifts_candidates_like_the_recent_reactions_and_leaves_other_rows_alone():
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], np.float32)  # x, y, z, w (unit rows)
    index = {"x": 0, "y": 1, "z": 2, "w": 3}
    candidates = np.array([[1, 2, 3, -1], [1, 2, 3, -1]])
    # w's logit is between y's and z's, a spread below y's
    logits = np.array([[1.0, 0.9, 0.95, -np.inf], [1.0, 0.9, 0.95, -np.inf]])
    # row 0 engaged with x and found nothing alone; row 1 has no reaction in the window
    reactions = Reactions(engaged=[["x"], []], skipped=[["y"], ["z"]], browsed=[[], []])
    full = FeedbackConfig(similarity_weight=1.0, similarity_evidence=0)  # one item counts fully
    out = rescored(logits, candidates, reactions, index, emb, full)
    assert np.argmax(out[0]) == 2  # w (cosine 0.6 to x) passes y and z (cosine 0)
    assert out[0, 0] > out[0, 1]  # among equally similar candidates the ranker's order holds
    assert out[0, 3] == -np.inf
    np.testing.assert_array_equal(out[1], logits[1])
    np.testing.assert_array_equal(rescored(logits, candidates, reactions, index, emb,
                                           FeedbackConfig(similarity_weight=0.0)), logits)


def test_an_item_found_alone_counts_for_the_rescoring_too():
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    candidates, logits = np.array([[0, 1, 2]]), np.array([[0.5, 0.4, 0.45]])
    reactions = Reactions(engaged=[[]], skipped=[[]], browsed=[["z"]])
    out = rescored(logits, candidates, reactions, {"x": 0, "y": 1, "z": 2}, emb,
                   FeedbackConfig(similarity_weight=1.0, similarity_evidence=0))
    assert np.argmax(out[0]) == 2


def test_the_rescoring_grows_with_the_evidence():
    """With `similarity_evidence` 8, one reaction moves a list a ninth as far as full evidence
    would, four reactions (here four ids of one embedding) a third."""
    emb = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    candidates, logits = np.array([[0, 1, 2]]), np.array([[0.5, 0.4, 0.45]])
    index = {"x": 0, "y": 1, "z": 2, "z2": 2, "z3": 2, "z4": 2}

    def shift(browsed):
        reactions = Reactions(engaged=[[]], skipped=[[]], browsed=[browsed])
        return rescored(logits, candidates, reactions, index, emb, FeedbackConfig(similarity_weight=1.0))[0] - logits[0]

    one, four = shift(["z"]), shift(["z", "z2", "z3", "z4"])
    np.testing.assert_allclose(four, one * (4 / 12) / (1 / 9), rtol=1e-6)
    assert one[2] > 0 > one[0]


def test_the_rescoring_is_its_per_row_definition_on_random_lists():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(500, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = {f"i{j}": j for j in range(500)}
    candidates = rng.integers(0, 500, (20, 30))
    candidates[4, 10:] = -1  # a short list
    candidates[5, 1:] = -1  # one candidate: nothing to compare
    logits = np.where(candidates >= 0, rng.normal(size=candidates.shape), -np.inf)
    pick = [[f"i{j}" for j in rng.integers(0, 520, rng.integers(0, 5))] for _ in range(40)]  # some unknown ids
    reactions = Reactions(engaged=pick[:20], skipped=[[]] * 20, browsed=pick[20:])
    cfg = FeedbackConfig()
    expected = logits.copy()
    for row in range(20):
        known = [index[i] for i in (*pick[row], *pick[20 + row]) if i in index]
        valid = candidates[row] >= 0
        if known and valid.sum() >= 2:
            cosine = emb[candidates[row, valid]] @ emb[known].mean(axis=0)
            weight = cfg.similarity_weight * len(known) / (len(known) + cfg.similarity_evidence)
            z = (cosine - cosine.mean()) / cosine.std()
            expected[row, valid] += weight * logits[row, valid].std() * z
    np.testing.assert_allclose(rescored(logits, candidates, reactions, index, emb, cfg), expected, rtol=1e-5)


WORDS = ContentTokens.build(["red soft", "blue hard", "red soft lamp", "blue hard lamp", "green", "green lamp"])
WORD_ITEMS = {"took": 0, "left": 1, "like_took": 2, "like_left": 3, "other": 4, "other2": 5}


def test_the_words_rescoring_lifts_what_shares_words_with_the_taken_and_not_the_left():
    candidates = np.array([[2, 3, 4, -1], [2, 3, 4, -1], [2, 3, 4, -1]])
    logits = np.array([[0.0, 1.0, 0.5, -np.inf]] * 3)
    # row 0 took one item and passed one over; row 1 only passed over; row 2 no reaction
    reactions = Reactions(engaged=[["took"], [], []], skipped=[["left"], ["left"], []], browsed=[[], [], []])
    cfg = FeedbackConfig(content_weight=2.0, content_evidence=0)
    out = content_rescored(logits, candidates, reactions, WORD_ITEMS, WORDS, cfg)
    assert list(np.argsort(-out[0, :3])) == [0, 2, 1]  # like the taken one, unrelated, like the left one
    assert out[0, 3] == -np.inf
    np.testing.assert_array_equal(out[1:], logits[1:])  # no contrast, no reaction: unchanged
    np.testing.assert_array_equal(
        content_rescored(logits, candidates, reactions, WORD_ITEMS, WORDS, FeedbackConfig(content_weight=0.0)), logits)


def test_an_item_found_alone_is_a_positive_for_the_words_rescoring():
    candidates, logits = np.array([[2, 3]]), np.array([[0.0, 1.0]])
    reactions = Reactions(engaged=[[]], skipped=[["left"]], browsed=[["took"]])
    out = content_rescored(logits, candidates, reactions, WORD_ITEMS, WORDS,
                           FeedbackConfig(content_weight=2.0, content_evidence=0))
    assert out[0, 0] > out[0, 1]


def test_the_words_rescoring_is_its_per_row_definition_on_random_lists():
    """The batched scatter-add and gather against the per-row definition on dense word
    vectors: x = Xᵀ(y - p), score = C x."""
    rng = np.random.default_rng(5)
    vocab = [f"w{j}" for j in range(30)]
    texts = [" ".join(rng.choice(vocab, rng.integers(1, 6))) for _ in range(300)]
    content = ContentTokens.build(texts)
    index = {f"i{j}": j for j in range(300)}
    candidates = rng.integers(0, 300, (16, 25))
    candidates[3, 5:] = -1
    candidates[4, 1:] = -1  # one candidate: nothing to compare
    logits = np.where(candidates >= 0, rng.normal(size=candidates.shape), -np.inf)

    def ids(n_max):
        return [[f"i{j}" for j in rng.integers(0, 310, rng.integers(0, n_max))] for _ in range(16)]  # some unknown

    reactions = Reactions(engaged=ids(4), skipped=ids(12), browsed=ids(3))
    cfg = FeedbackConfig()
    expected = logits.copy()
    for row in range(16):
        took = [index[i] for i in (*reactions.engaged[row], *reactions.browsed[row]) if i in index]
        left = [index[i] for i in reactions.skipped[row] if i in index]
        valid = candidates[row] >= 0
        if not (took and left and valid.sum() >= 2):
            continue
        y = np.array([1.0] * len(took) + [0.0] * len(left))
        p = (y.sum() + 1) / (len(y) + 2)
        x = content.vectors(np.array(took + left)).astype(np.float64).T @ (y - p)
        s = content.vectors(candidates[row, valid]) @ x
        if s.std() > 1e-12:
            weight = cfg.content_weight * len(y) / (len(y) + cfg.content_evidence)
            expected[row, valid] += weight * logits[row, valid].std() * (s - s.mean()) / s.std()
    out = content_rescored(logits, candidates, reactions, index, content, cfg)
    assert not np.allclose(out, logits)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)  # float32 word vectors


def test_newer_reactions_pull_harder_with_a_half_life_and_the_arm_without_it_weighs_them_alike():
    """x engaged with 2 days ago, y an hour ago: with a 12-hour half-life the query and the
    re-scoring centroid lean to y (x weighs 1/16); without (no-recency arm: an infinite half
    life) the two count the same. The re-scoring's evidence stays the count of reactions."""
    q = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
    r = rows([["y", "x"], ["y", "x"]], [[NOW - 3_600, NOW - 2 * DAY]] * 2, [[], []], [[], []])
    cfg = FeedbackConfig(half_life_s=12 * 3_600)
    reactions = reacted(r, cfg, [12 * 3_600, np.inf])
    assert reactions.weights["engaged"][0] == pytest.approx([0.5 ** (1 / 12), 0.5 ** 4])
    assert reactions.weights["engaged"][1] == [1.0, 1.0]
    moved = feedback_queries(q, r, ITEMS, EMB, cfg, reactions)
    assert moved[0, 1] > moved[0, 0] and moved[1, 1] == pytest.approx(moved[1, 0])
    assert np.linalg.norm(moved[0]) == pytest.approx(np.linalg.norm(q[0]), rel=1e-6)
    sums, mass = reactions.weighted_sums("engaged", ITEMS, EMB)
    assert mass[1] == 2.0 and mass[0] == pytest.approx(0.5 ** (1 / 12) + 0.5 ** 4)
    assert list(reactions.sums("engaged", ITEMS, EMB)[1]) == [2.0, 2.0]  # the count, for the evidence
    # without a half-life at all, no weights are kept and nothing changes from before
    plain = reacted(r, FeedbackConfig(half_life_s=None))
    assert plain.weights is None
    np.testing.assert_allclose(feedback_queries(q, r, ITEMS, EMB, FeedbackConfig(half_life_s=None), plain)[0],
                               moved[1], rtol=1e-6)
