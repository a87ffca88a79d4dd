"""Baselines checked against their defining formulas on tiny matrices."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from hyperrec.models.baselines import InteractionMatrix, ease, evaluate_baselines, ials, item_knn, popularity

X = sp.csr_matrix(np.array([[1, 1, 0, 0],
                            [1, 0, 1, 0],
                            [0, 1, 1, 1],
                            [1, 1, 1, 0]], dtype=np.float32))


def test_popularity_and_cosine_knn():
    assert popularity(X).tolist() == [3, 3, 3, 1]
    S = item_knn(X)
    # items 0 and 1 share users 0 and 3: 2 / (sqrt(3) * sqrt(3))
    assert S[0, 1] == pytest.approx(2 / 3) and S[0, 3] == 0.0 and np.all(np.diag(S) == 0)
    assert S[2, 3] == pytest.approx(1 / np.sqrt(3))


def test_ease_satisfies_its_optimality_conditions():
    lam = 2.0
    B = ease(X, lam).astype(np.float64)
    G = (X.T @ X).toarray()
    assert np.allclose(np.diag(B), 0)
    # stationarity of ||X - XB||² + λ||B||² with diag(B) = 0: (G + λI)B - G is diagonal
    R = (G + lam * np.eye(4)) @ B - G
    assert np.allclose(R - np.diag(np.diag(R)), 0, atol=1e-5)


def test_ials_factors_have_the_right_shapes():
    uf, itf = ials(X, factors=3, iterations=3)
    assert uf.shape == (4, 3) and itf.shape == (4, 3) and np.isfinite(uf @ itf.T).all()


def test_evaluate_baselines_scores_by_the_shared_protocol():
    train = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u3", "u3"], "item_id": ["a", "b", "a", "a", "c"]})
    test = pd.DataFrame({"user_id": ["u2", "u3"], "item_id": ["b", "d"]})
    rows = {r["model"]: r for r in evaluate_baselines(train, test, k=2, models=("popularity", "ease"))}
    # popularity ranks a (3) > b = c (1); u2 has a excluded -> [b, c] hits b; u3 -> [b] misses d
    assert rows["popularity"]["recall@2"] == pytest.approx(0.5)
    assert InteractionMatrix.from_pairs(train).matrix.shape == (3, 3)
    with pytest.raises(ValueError, match="unknown baseline"):
        evaluate_baselines(train, test, models=("magic",))
