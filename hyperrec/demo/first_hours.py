"""What a taste drift leaves the platform to go on, span by span after it begins, and how
far any list built from that could get: read back from a finished demo's logs and the
simulator's truth (which the platform never reads).

A drifted user's new taste shows only in what that user does after the drift: items found
alone (a view naming no list) and clicks. A list served before any such event is *blind*:
nothing the platform holds about that user has changed. Per 6-hour span after the first
user starts drifting, this module gives the hidden click probability of the top slots
served to blind and to informed drifted users and to the others, and two ceilings:
- informed lists, at best: the `top` items of highest hidden appeal in the category the
  user's post-drift evidence names most, which a platform cannot know (it reads the
  simulator's item appeal) and which beats every list built from that evidence we measured;
- the user-agnostic hedge: one item of highest hidden appeal per category, the best a list
  can do for a user nothing is known about; it is what a blind list could get, and it
  costs the others what their personalized lists are worth above it.
From those, the drifted users' and everyone's click probability in each span had every
informed list reached its ceiling and every other list stayed as served: an upper bound
on `drifted_pclick_trough_ratio` and, through the click probability, on
`ctr_trough_ratio` for any mechanism that adapts to each user's own evidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hyperrec.data.world import World

SPAN_H = 6.0


def _day(ts: pd.Series | np.ndarray, start_s: float) -> np.ndarray:
    """Fractional simulated days (the truth's clock) of timestamps (datetimes or epoch seconds)."""
    if isinstance(ts, pd.Series) and pd.api.types.is_datetime64_any_dtype(ts):
        ts = pd.to_datetime(ts, utc=True).astype("int64") / 1e9
    return (np.asarray(ts, float) - start_s) / 86_400


def evidence(world: World, events: pd.DataFrame) -> pd.DataFrame:
    """Each drifted user's events after their own drift began that tell the platform of
    the new taste: views naming no list (found alone) and clicks (user, item, day)."""
    truth = world.truth
    start_s = pd.Timestamp(world.meta["config"]["start"], tz="UTC").timestamp()
    users = pd.Index(world.users["user_id"]).get_indexer(events["user_id"])
    items = pd.Index(world.items["item_id"]).get_indexer(events["item_id"])
    day = _day(events["ts"], start_s)
    found = events["request_id"].isna().to_numpy() & (events["event_type"] == "view").to_numpy()
    keep = (users >= 0) & (items >= 0) & (found | (events["event_type"] == "click").to_numpy())
    frame = pd.DataFrame({"u": users[keep], "i": items[keep], "day": day[keep]})
    drifting = np.linalg.norm(truth.user_shift, axis=1) > 0
    return frame[drifting[frame["u"]] & (frame["day"].to_numpy() > truth.drift_start[frame["u"]])]


def served_lists(world: World, shown: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Personalized lists, one row each: request_id, user position `u`, `day`, and `p`, the
    mean hidden click probability of its first `top` slots when it was served."""
    shown = shown[(shown["policy"] == "personalized") & (shown["position"] < top)]
    users = pd.Index(world.users["user_id"]).get_indexer(shown["user_id"])
    items = pd.Index(world.items["item_id"]).get_indexer(shown["item_id"])
    known = (users >= 0) & (items >= 0)
    start_s = pd.Timestamp(world.meta["config"]["start"], tz="UTC").timestamp()
    day = _day(shown["ts"].to_numpy(float)[known], start_s)
    p = world.truth.click_probability(users[known], items[known], day)
    frame = pd.DataFrame({"request_id": shown["request_id"].to_numpy()[known], "u": users[known], "day": day, "p": p})
    return frame.groupby("request_id").agg(u=("u", "first"), day=("day", "first"), p=("p", "mean")).reset_index()


def _category_tops(world: World, day: float, per_category: int) -> dict[str, np.ndarray]:
    """Per category, its items on sale by `day` in order of hidden appeal (best first)."""
    truth, cats = world.truth, world.items["category"].to_numpy()
    alive = truth.item_created_day <= day
    return {c: (idx := np.flatnonzero((cats == c) & alive))[np.argsort(-truth.item_bias[idx])][:per_category]
            for c in np.unique(cats)}


def first_hours(world: World, events: pd.DataFrame, shown: pd.DataFrame, spans: int = 8, top: int = 5) -> dict:
    """Per `SPAN_H` span after the first drift begins (see the module doc): lists to
    drifted users and the share of them blind; hidden click probability served to blind
    and informed drifted users and to the others; the informed lists' ceiling; the hedge
    for drifted users and for the others; and the ceilings these give, as ratios to the
    day before the drift. Returns {"before": {...}, "spans": DataFrame}."""
    truth = world.truth
    drifting = np.linalg.norm(truth.user_shift, axis=1) > 0
    t0 = float(truth.drift_start[drifting].min())
    lists = served_lists(world, shown, top)
    lists["drifted"] = drifting[lists["u"]]
    lists["span"] = np.floor((lists["day"] - t0) * 24 / SPAN_H).astype(int)
    before = lists[(lists["day"] >= t0 - 1) & (lists["day"] < t0)]
    base = {"drifted": float(before.loc[before["drifted"], "p"].mean()),
            "others": float(before.loc[~before["drifted"], "p"].mean()), "all": float(before["p"].mean())}

    said = evidence(world, events)
    by_user = {u: g.sort_values("day") for u, g in said.groupby("u")}
    cats = world.items["category"].to_numpy()
    tops = _category_tops(world, t0 + spans * SPAN_H / 24, 3 * top)
    category_heads = np.array([v[0] for v in tops.values()])
    rows = []
    for span in range(spans):
        here = lists[lists["span"] == span]
        drifted = here[here["drifted"]]
        informed, ceiling, hedge = [], [], []
        for r in drifted.itertuples():
            g = by_user.get(r.u)
            g = g[g["day"] < r.day] if g is not None else None
            hedge.append(truth.click_probability(np.full(len(category_heads), r.u), category_heads, r.day).mean())
            if g is None or g.empty:
                informed.append(False)
                ceiling.append(np.nan)
                continue
            named = pd.Series(cats[g["i"]]).value_counts().index[0]
            best = [i for i in tops[named] if i not in set(g["i"]) and truth.item_created_day[i] <= r.day][:top]
            informed.append(True)
            ceiling.append(truth.click_probability(np.full(len(best), r.u), np.array(best), r.day).mean())
        informed, ceiling = np.array(informed, bool), np.array(ceiling, float)
        others = here[~here["drifted"]]
        others_hedge = [truth.click_probability(np.full(len(category_heads), u), category_heads, d).mean()
                        for u, d in zip(others["u"], others["day"])]
        p = drifted["p"].to_numpy()
        best_informed = np.fmax(p[informed], ceiling[informed])
        drifted_ceiling = (p[~informed].sum() + best_informed.sum()) / max(len(p), 1)
        all_ceiling = (others["p"].sum() + p[~informed].sum() + best_informed.sum()) / max(len(here), 1)
        rows.append({
            "hours": f"{span * SPAN_H:.0f}-{(span + 1) * SPAN_H:.0f}", "drifted_lists": len(drifted),
            "blind_share": float((~informed).mean()) if len(informed) else np.nan,
            "served_blind": float(p[~informed].mean()) if (~informed).any() else np.nan,
            "served_informed": float(p[informed].mean()) if informed.any() else np.nan,
            "ceiling_informed": float(np.nanmean(ceiling)) if informed.any() else np.nan,
            "served_others": float(others["p"].mean()),
            "hedge_drifted": float(np.mean(hedge)) if hedge else np.nan,
            "hedge_others": float(np.mean(others_hedge)) if others_hedge else np.nan,
            "drifted_ratio_served": float(p.mean() / base["drifted"]) if len(p) else np.nan,
            "drifted_ratio_ceiling": float(drifted_ceiling / base["drifted"]),
            "all_ratio_served": float(here["p"].mean() / base["all"]),
            "all_ratio_ceiling": float(all_ceiling / base["all"]),
        })
    return {"before": base, "spans": pd.DataFrame(rows)}


def from_home(settings, world: World, spans: int = 8) -> dict:
    """`first_hours` on a finished demo's event and impression logs in `settings.home`."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.monitor.traffic import shown_items

    events = EventLog(settings.event_log).read(0, limit=2**62)[1]
    return first_hours(world, events, shown_items(ImpressionLog(settings.impression_log).read()), spans)


def summary(result: dict) -> dict:
    """The JSON form for closed_loop.json: the day before, and per span its row; plus the
    trough ceilings (the lowest span of each ceiling ratio, the spans before the lowest
    served one left out, as the demo's trough ratios are judged)."""
    spans = result["spans"]
    return {"before": result["before"], "spans": spans.round(4).to_dict(orient="records"),
            "drifted_ratio_ceiling_min": float(spans["drifted_ratio_ceiling"].min()),
            "all_ratio_ceiling_min": float(spans["all_ratio_ceiling"].min())}
