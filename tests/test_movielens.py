"""The loaders on small files in both MovieLens layouts, written by the tests."""

import pandas as pd
import pytest

from hyperrec.data.movielens import load_movielens
from hyperrec.data.schemas import SchemaError


@pytest.fixture
def ml100k(tmp_path):
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n")
    flags = ["0"] * 19
    action = flags.copy()
    action[1] = "1"
    comedy_romance = flags.copy()
    comedy_romance[5] = comedy_romance[14] = "1"
    (d / "u.item").write_bytes(
        ("10|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(action) + "\n"
         "20|Amélie (2001)|01-Jan-2001||http://y|" + "|".join(comedy_romance) + "\n").encode("latin-1"))
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    return d


@pytest.fixture
def ml_latest(tmp_path):
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,2.5,964981247\n7,1,0.5,1106635946\n")
    (d / "movies.csv").write_text(
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n'
        '3,"Grumpier Old Men, The (1995)",Comedy|Romance\n4,Nothing (2000),(no genres listed)\n')
    (d / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,1139045764\n7,1,fun,1139045765\n")
    return d


def test_100k_format(ml100k):
    w = load_movielens(ml100k)
    assert w.meta["source"] == "movielens-100k"
    assert len(w.events) == 3 and set(w.events["event_type"]) == {"rating"}
    assert sorted(w.events["rating"]) == [3.0, 4.0, 5.0]
    assert list(w.events["ts"]) == sorted(w.events["ts"])
    items = w.items.set_index("item_id")
    assert items.loc["m10", "category"] == "Action"
    assert items.loc["m20", "title"] == "Amélie (2001)"  # latin-1 decoded
    assert "Comedy" in items.loc["m20", "description"] and "Romance" in items.loc["m20", "description"]
    users = w.users.set_index("user_id")
    assert users.loc["ml1", "age_band"] == "18-24" and users.loc["ml2", "age_band"] == "45-54"
    assert users.loc["ml1", "region"] == "zip8" and users["consent_personalization"].all()


def test_latest_format(ml_latest):
    w = load_movielens(ml_latest)
    assert w.meta["source"] == "movielens-latest"
    assert len(w.events) == 3 and len(w.users) == 2 and len(w.items) == 3
    items = w.items.set_index("item_id")
    assert items.loc["m1", "category"] == "Adventure"
    assert "pixar" in items.loc["m1", "description"] and "fun" in items.loc["m1", "description"]
    assert items.loc["m3", "title"] == "Grumpier Old Men, The (1995)"
    assert items.loc["m4", "category"] == "unknown"
    # an item is created no later than its first rating
    first = w.events.groupby("item_id")["ts"].min()
    assert (items.loc[first.index, "created_ts"] <= first).all()
    assert (w.users["age_band"] == "unknown").all()


def test_missing_files_and_bad_rows_give_clear_errors(tmp_path, ml_latest):
    with pytest.raises(FileNotFoundError, match="neither u.data"):
        load_movielens(tmp_path)
    ratings = pd.read_csv(ml_latest / "ratings.csv")
    ratings.loc[1, "rating"] = 7.0
    ratings.to_csv(ml_latest / "ratings.csv", index=False)
    with pytest.raises(SchemaError, match=r"row \d, field 'rating': > 5.0"):
        load_movielens(ml_latest)
