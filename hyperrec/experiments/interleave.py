"""Team-draft interleaving: one list made of two versions' lists, each item credited to the
version (team) that put it there, so a user's clicks compare the two versions on the same
request, the same user and the same moment.

Why the online trial uses it (`hyperrec.experiments.canary`): an A/B test compares different users'
lists, and most of its variance is between users and moments, not between the versions.
Here every list is its own control. The price: it measures which version's items users
prefer inside a mixed list, not what a whole list of one version does (diversity across a
list, say); the purchase guardrail is checked the same way.

Team draft (Radlinski, Kurup and Joachims, CIKM 2008): in each round the team with fewer
picks so far (a coin flip on a tie) adds its best item not yet in the list. A team's
position bias evens out over requests because the first pick is random.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np


def team_draft(a: Sequence[str], b: Sequence[str], k: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Merge ranked lists `a` and `b` into at most `k` distinct items: [(team, index into
    that team's list)], team 0 for `a` and 1 for `b`. Stops early when both run out."""
    picked: set[str] = set()
    out: list[tuple[int, int]] = []
    cursor, count = [0, 0], [0, 0]
    lists = (a, b)
    while len(out) < k:
        for team in (0, 1):  # skip what the other team already placed
            while cursor[team] < len(lists[team]) and lists[team][cursor[team]] in picked:
                cursor[team] += 1
        left = [cursor[t] < len(lists[t]) for t in (0, 1)]
        if not any(left):
            break
        if not all(left):
            team = 0 if left[0] else 1
        elif count[0] != count[1]:
            team = 0 if count[0] < count[1] else 1
        else:
            team = int(rng.random() < 0.5)
        out.append((team, cursor[team]))
        picked.add(lists[team][cursor[team]])
        cursor[team] += 1
        count[team] += 1
    return out


def interleave(champion, challenger, k: int, rng: np.random.Generator):
    """Two `hyperrec.online.serving_path.Recommended` lists for one request -> one list whose `teams`
    name each item's version. Scores and reasons come from the list that contributed the
    item; the exploration slot is kept (for bandit feedback) if its item made it in. The
    list is the challenger's to report (`model_version`): it exists because of the trial."""
    draft = team_draft(champion.item_ids, challenger.item_ids, k, rng)
    sources = (champion, challenger)
    fields = ("item_ids", "titles", "categories", "scores", "reasons")
    merged = {f: [getattr(sources[t], f)[i] for t, i in draft] for f in fields}
    explored = next((sources[t] for t, i in draft if sources[t].explored_item == sources[t].item_ids[i]), None)
    return replace(challenger, **merged, teams=[sources[t].model_version for t, _ in draft],
                   explored_item=explored.explored_item if explored else None,
                   explored_x=explored.explored_x if explored else None)
