"""Load MovieLens into the hyperrec schemas, from both published layouts:

- "latest" / ml-latest-small: `ratings.csv`, `movies.csv` (genres "A|B"), optional `tags.csv`,
  imported through the mapping file users would write (`examples/movielens-latest.yaml`);
- 100K: `u.data` (user, item, rating, unix ts; tab-separated), `u.item` (pipe-separated,
  latin-1, 19 genre flags), `u.user` (age, gender, occupation, zip), optional `u.genre`;
  its genre flags and headerless files are read here.

Ratings become `rating` events; titles (+ genres and tags) become item text and the first
genre the category. MovieLens users consented to research use when they signed up, so they
are loaded with both consent purposes granted at their first rating.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.config import PROJECT_ROOT
from hyperrec.data.schemas import Event, Item, User, validate_frame
from hyperrec.data.world import World

LATEST_MAPPING = PROJECT_ROOT / "examples" / "movielens-latest.yaml"

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def detect_format(path: Path) -> str:
    if (path / "u.data").exists():
        return "100k"
    if (path / "ratings.csv").exists():
        return "latest"
    raise FileNotFoundError(f"{path}: neither u.data (100K format) nor ratings.csv (latest format)")


def load_movielens(path: str | Path) -> World:
    """Read a MovieLens folder in either format into a validated World."""
    path = Path(path)
    fmt = detect_format(path)
    meta = {"source": f"movielens-{fmt}", "path": str(path.resolve())}
    if fmt == "latest":
        from hyperrec.data.importer import import_world
        from hyperrec.data.mapping import load_mapping

        mapping = load_mapping(LATEST_MAPPING)
        if not (path / "tags.csv").exists():
            mapping.items.extra_text = None
        world = import_world(mapping, path, strict=True).world()
        world.meta = meta
        return world
    ratings, items, profiles = _read_100k(path)
    ratings["ts"] = pd.to_datetime(ratings["ts"], unit="s", utc=True)
    events = pd.DataFrame({
        "event_id": [f"ml-{k}" for k in range(len(ratings))],
        "user_id": "ml" + ratings["user"].astype(str),
        "item_id": "m" + ratings["item"].astype(str),
        "event_type": "rating",
        "ts": ratings["ts"],
        "rating": ratings["rating"].astype(float),
    }).sort_values("ts", kind="stable").reset_index(drop=True)
    first_seen = events.groupby("item_id")["ts"].min()
    items["created_ts"] = items["item_id"].map(first_seen).fillna(events["ts"].min())
    users = _users(events, profiles)
    return World(validate_frame(users, User, "users"), validate_frame(items, Item, "items"),
                 validate_frame(events, Event, "events"), None, meta)


def _read_100k(path: Path):
    ratings = pd.read_csv(path / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    genre_names = GENRES_100K
    if (path / "u.genre").exists():
        g = pd.read_csv(path / "u.genre", sep="|", names=["name", "idx"], encoding="latin-1")
        genre_names = g.dropna().sort_values("idx")["name"].tolist()
    cols = ["item", "title", "release", "video", "url"] + genre_names
    raw = pd.read_csv(path / "u.item", sep="|", names=cols, encoding="latin-1")
    flags = raw[genre_names].to_numpy().astype(bool)
    genres = ["|".join(np.array(genre_names)[row]) for row in flags]
    items = _items(raw["item"], raw["title"].fillna("untitled"), genres)
    profiles = None
    if (path / "u.user").exists():
        profiles = pd.read_csv(path / "u.user", sep="|", names=["user", "age", "gender", "occupation", "zip"])
    return ratings, items, profiles


def _items(ids: pd.Series, titles: pd.Series, genres, extra_text=None) -> pd.DataFrame:
    genres = pd.Series(list(genres), index=ids.index).replace("", "unknown")
    text = titles.astype(str) + " " + genres.str.replace("|", " ", regex=False)
    if extra_text is not None:
        text = (text + " " + extra_text).str.strip()
    return pd.DataFrame({"item_id": "m" + ids.astype(str), "title": titles.astype(str),
                         "category": genres.str.split("|").str[0], "description": text})


def _age_band(age: pd.Series) -> pd.Series:
    bins = [0, 25, 35, 45, 55, 65, 200]
    labels = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
    return pd.cut(age, bins=bins, labels=labels, right=False).astype(str).replace("nan", "unknown")


def _users(events: pd.DataFrame, profiles: pd.DataFrame | None) -> pd.DataFrame:
    first = events.groupby("user_id")["ts"].min()
    users = pd.DataFrame({"user_id": first.index, "signup_ts": first.to_numpy()})
    users["consent_personalization"] = True
    users["consent_analytics"] = True
    users["consent_ts"] = users["signup_ts"]
    if profiles is not None:
        p = profiles.assign(user_id="ml" + profiles["user"].astype(str)).set_index("user_id")
        users["age_band"] = users["user_id"].map(_age_band(p["age"])).fillna("unknown")
        zip_region = "zip" + p["zip"].astype(str).str[0].where(p["zip"].astype(str).str[0].str.isdigit())
        users["region"] = users["user_id"].map(zip_region).fillna("unknown")
    return users
