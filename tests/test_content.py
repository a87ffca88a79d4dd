"""Items as bags of their words: the vocabulary keeps the words that tell items apart."""

import numpy as np
import pandas as pd

from hyperrec.models.content import ContentTokens


def test_the_vocabulary_keeps_words_shared_by_some_items_but_not_by_most():
    texts = ["red soft lamp", "red hard chair", "blue soft lamp", "blue hard desk", "green lamp oddity"]
    content = ContentTokens.build(texts, max_vocabulary=4)
    # lamp is in 3 of 5 items (over half): dropped; chair, desk, oddity, green in one: dropped;
    # red, blue, soft, hard in two each, ordered by count then alphabet
    assert content.vocabulary == ("blue", "hard", "red", "soft")
    assert ContentTokens.build(texts, max_vocabulary=2).vocabulary == ("blue", "hard")


def test_vectors_are_unit_bags_of_words_and_zeros_for_padding_or_no_words():
    content = ContentTokens.build(["red soft", "red hard", "blue soft", "blue hard", "plain"])
    v = content.vectors(np.array([[0, -1], [4, 3]]))
    assert v.shape == (2, 2, len(content.vocabulary))
    vocab = list(content.vocabulary)
    np.testing.assert_allclose(v[0, 0, [vocab.index("red"), vocab.index("soft")]], [2 ** -0.5] * 2, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(v[0, 0]), 1.0, rtol=1e-6)
    assert not v[0, 1].any() and not v[1, 0].any()  # padding; an item with no vocabulary word
    assert v[0, 0] @ v[1, 1] == 0  # red soft and blue hard share nothing


def test_a_word_repeated_in_one_text_counts_once():
    content = ContentTokens.build(["red red red", "red blue", "blue", "green", "green"])
    np.testing.assert_allclose(content.vectors(np.array([0]))[0], np.eye(len(content.vocabulary))[
        content.vocabulary.index("red")])


def test_the_words_saved_with_a_unit_load_back_the_same(tmp_path):
    items = pd.DataFrame({"description": ["red soft by Acme", "blue hard by Acme", None, "red lamp"],
                          "category": ["home", "home", "toys", "toys"]})
    content = ContentTokens.from_catalog(items)
    assert "home" in content.vocabulary and "red" in content.vocabulary
    content.save(tmp_path / "content.npz")
    loaded = ContentTokens.load(tmp_path / "content.npz")
    assert loaded.vocabulary == content.vocabulary
    np.testing.assert_array_equal(loaded.tokens, content.tokens)
    np.testing.assert_array_equal(loaded.vectors(np.arange(4)), content.vectors(np.arange(4)))


def test_sums_add_each_rows_weighted_unit_word_vectors():
    content = ContentTokens.build(["red soft", "red hard", "blue soft", "blue hard", "plain"])
    rows, positions, values = np.array([0, 0, 1, 1]), np.array([0, 3, 4, 1]), np.array([1.0, -0.5, 2.0, 0.25])
    expected = np.stack([content.vectors(np.array([0]))[0] - 0.5 * content.vectors(np.array([3]))[0],
                         0.25 * content.vectors(np.array([1]))[0]])  # item 4 has no vocabulary word
    np.testing.assert_allclose(content.sums(rows, positions, values, 2), expected, rtol=1e-6)
    weights = content.sums(rows, positions, values, 2)
    np.testing.assert_allclose(content.dot(weights, np.array([[2, -1], [1, 0]])),
                               [[weights[0] @ content.vectors(np.array([2]))[0], 0.0],
                                [weights[1] @ content.vectors(np.array([1]))[0],
                                 weights[1] @ content.vectors(np.array([0]))[0]]], rtol=1e-6)
