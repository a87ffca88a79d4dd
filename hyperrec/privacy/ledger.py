"""The per-purpose consent ledger, in the privacy database it shares with the erasure list
and audit (`<home>/privacy.db`, or PostgreSQL with `Settings.database_url`: hyperrec.privacy.db)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd

from hyperrec.config import Settings
from hyperrec.privacy.db import PRIVACY_DB, open_privacy_db, privacy_location

Purpose = Literal["personalization", "analytics"]
PURPOSES: tuple[str, ...] = ("personalization", "analytics")
# No record means no consent: consent must be an affirmative, recorded act (GDPR Art. 4(11),
# 7(1)), so a user the ledger has never heard of is not personalized (nor tracked) by default.
DEFAULT_CONSENT: dict[str, bool] = {"personalization": False, "analytics": False}


_US = pd.Timedelta(1, "us")
_EPOCH = pd.Timestamp(0, tz="UTC")
_CHUNK = 500  # SQLite's bound-parameter limit; PostgreSQL takes each chunk as one array


def privacy_db(settings: Settings) -> Path:
    """The embedded mode's file (`settings.database_url` unset)."""
    return settings.home / PRIVACY_DB


def _to_us(at: datetime | pd.Timestamp | None) -> int:
    if at is None:
        return int(time.time() * 1_000_000)
    if getattr(at, "tzinfo", None) is None:
        raise ValueError("consent time needs a timezone")
    return (pd.Timestamp(at) - _EPOCH) // _US


class ConsentLedger:
    """Per user and purpose: granted or not, when, and from which source. The state at a time
    is the latest record at or before it (ties: the later recorded wins); no record means
    `defaults[purpose]`."""

    def __init__(self, where: Path | str, defaults: Mapping[str, bool] | None = None):
        """`where`: a privacy.db path, or a PostgreSQL URL. Safe to share across threads (the
        model server asks from several)."""
        self.defaults = {**DEFAULT_CONSENT, **(defaults or {})}
        for purpose in self.defaults:
            self._purpose(purpose)
        self.db = open_privacy_db(where)

    @classmethod
    def open(cls, settings: Settings, defaults: Mapping[str, bool] | None = None) -> ConsentLedger:
        return cls(privacy_location(settings), defaults)

    @staticmethod
    def _purpose(purpose: str) -> str:
        if purpose not in PURPOSES:
            raise ValueError(f"unknown purpose {purpose!r}: one of {list(PURPOSES)}")
        return purpose

    def record_consent(self, user_id: str, purpose: Purpose, granted: bool, at: datetime | None = None,
                       source: str = "api") -> None:
        """Append one grant or withdrawal (`at`: when the user made it, tz-aware; default now)."""
        self.db.execute("INSERT INTO consent (user_id, purpose, granted, at_us, source, recorded_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (user_id, self._purpose(purpose), int(bool(granted)), _to_us(at), source, time.time()))

    def record_profile(self, user: Mapping, source: str = "crm") -> None:
        """Both purposes from a `schemas.User`-shaped record (consent_* flags at consent_ts)."""
        for purpose in PURPOSES:
            self.record_consent(user["user_id"], purpose, user[f"consent_{purpose}"], user["consent_ts"], source)

    def record_profiles(self, users: pd.DataFrame, source: str = "crm") -> int:
        """`record_profile` for a whole users table, in one transaction."""
        now = time.time()
        rows = [(str(u), purpose, int(bool(g)), _to_us(ts), source, now)
                for purpose in PURPOSES
                for u, g, ts in zip(users["user_id"], users[f"consent_{purpose}"], users["consent_ts"])]
        self.db.executemany("INSERT INTO consent (user_id, purpose, granted, at_us, source, recorded_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def consented(self, user_ids: Sequence[str], purpose: Purpose, at: datetime | None = None) -> list[bool]:
        """`has_consent` for a batch of users in one indexed query (the model server asks
        this for every micro-batch: a withdrawal takes effect on the next request)."""
        ids = list(dict.fromkeys(user_ids))
        latest: dict[str, bool] = {}
        for start in range(0, len(ids), _CHUNK):
            users, params = self.db.users_in(ids[start:start + _CHUNK])
            rows = self.db.query(f"SELECT user_id, granted FROM consent WHERE purpose = ? AND at_us <= ? AND {users} "
                                 "ORDER BY user_id, at_us DESC, id DESC", (self._purpose(purpose), _to_us(at), *params))
            for user, granted in rows:
                latest.setdefault(user, bool(granted))
        return [latest.get(u, self.defaults[purpose]) for u in user_ids]

    def has_consent(self, user_id: str, purpose: Purpose, at: datetime | None = None) -> bool:
        rows = self.db.query("SELECT granted FROM consent WHERE user_id = ? AND purpose = ? AND at_us <= ? "
                             "ORDER BY at_us DESC, id DESC LIMIT 1", (user_id, self._purpose(purpose), _to_us(at)))
        return self.defaults[purpose] if not rows else bool(rows[0][0])

    def _latest(self, purpose: str, at: datetime | None) -> dict[str, bool]:
        rows = self.db.query(
            "SELECT user_id, granted FROM (SELECT user_id, granted, ROW_NUMBER() OVER "
            "(PARTITION BY user_id ORDER BY at_us DESC, id DESC) AS n FROM consent WHERE purpose = ? AND at_us <= ?) "
            "AS latest WHERE n = 1", (self._purpose(purpose), _to_us(at)))
        return {user: bool(granted) for user, granted in rows}

    def users_without(self, purpose: Purpose, at: datetime | None = None,
                      among: Iterable[str] | None = None) -> set[str]:
        """Users whose latest record at `at` (default now) withholds `purpose`. The ledger
        cannot list users it never heard of: pass `among` (e.g. the training set's users) to
        include those too when the purpose's default is False."""
        latest = self._latest(purpose, at)
        if among is None:
            return {user for user, granted in latest.items() if not granted}
        return {user for user in set(among) if not latest.get(user, self.defaults[purpose])}

    def filter_events_by_consent(self, events: pd.DataFrame, purpose: Purpose, user_col: str = "user_id",
                                 ts_col: str = "ts") -> pd.DataFrame:
        """The events whose user had consented to `purpose` at the event's own time (an as-of
        join per user, vectorized); order and index kept."""
        self._purpose(purpose)
        if events.empty:
            return events.copy()
        ledger = pd.DataFrame(self.db.query("SELECT user_id, granted, at_us FROM consent WHERE purpose = ? "
                                            "ORDER BY at_us, id", (purpose,)), columns=["user_id", "granted", "at_us"])
        ledger = ledger.drop_duplicates(["user_id", "at_us"], keep="last")  # same instant: later recorded wins
        left = pd.DataFrame({"user_id": events[user_col].astype(str).to_numpy(),
                             "at_us": ((pd.to_datetime(events[ts_col], utc=True) - _EPOCH) // _US).to_numpy("int64"),
                             "pos": range(len(events))}).sort_values("at_us", kind="stable")
        ledger = ledger.astype({"user_id": object, "at_us": "int64", "granted": "float64"})
        joined = pd.merge_asof(left.astype({"user_id": object}), ledger, on="at_us", by="user_id",
                               direction="backward")
        allowed = joined["granted"].fillna(int(self.defaults[purpose])).astype(bool).to_numpy()
        keep = pd.Series(False, index=range(len(events)))
        keep.iloc[joined["pos"].to_numpy()] = allowed
        return events[keep.to_numpy()]

    def forget(self, user_id: str) -> int:
        """Delete the user's consent records (erasure); returns how many."""
        return self.db.execute("DELETE FROM consent WHERE user_id = ?", (user_id,), retry=True)

    def close(self) -> None:
        self.db.close()
