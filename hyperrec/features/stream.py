"""The stream processor: new events -> windowed folds -> Feast push -> online store.

Embedded, it tails the SQLite event log; on a cluster `hyperrec.features.kafka_source` feeds the
same log and processor from Kafka. The offset is committed only after the online write, so
a crash replays the batch instead of losing it (the pushes are idempotent upserts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hyperrec.data.eventlog import EventLog, LogUnavailable
from hyperrec.data.world_db import role_event_types
from hyperrec.features.views import FEATURE_VIEWS
from hyperrec.features.windows import ENGAGED, StreamFolds

PUSHED_VIEWS = [v for v in FEATURE_VIEWS if v.push]  # each fed by a `<view>_push` PushSource


class StreamProcessor:
    def __init__(self, store, log: EventLog, consumer: str = "online-features", erasures=None,
                 batch_only: Callable[[str], bool] | None = None,
                 users_changed: Callable[[list[str]], None] | None = None, engaged: tuple[str, ...] = ENGAGED,
                 scope: str = "all"):
        """`erasures`: a `hyperrec.privacy.ErasureWatch`; an erased user's windows are dropped
        and their online rows deleted again at the next poll, and their events never folded.
        `batch_only(user)`: True for users whose features must stay what batch
        materialization wrote (an experiment's real-time-off arm); their events are skipped.
        `users_changed(users)`: called after each online write with the users it changed
        (`hyperrec.online.recs_cache.invalidator`: their cached lists go). `engaged`: the event
        types kept as recent engaged items (the workspace's, hyperrec.data.event_types). `scope`:
        which folds (StreamFolds: all, users, items)."""
        self.store, self.log, self.consumer = store, log, consumer
        self.folds = StreamFolds.for_types(engaged, scope)
        self.erasures = erasures
        self.batch_only = batch_only
        self.users_changed = users_changed
        self._batch_only_seen: dict[str, bool] = {}
        self.dead_lettered = 0  # rows the fold refused, copied to the log's dead letters
        self.skipped_in_history = 0

    def _forget_erased(self) -> None:
        if self.erasures is None:
            return
        new = self.erasures.poll()
        if new:
            self.folds.forget(new)
            for user in new:
                self.erasures.erase_online(user)

    def warm_start(self, history: pd.DataFrame) -> None:
        """Rebuild the window state from recent history (at least the longest window)."""
        if self.erasures is not None:
            self.erasures.poll()
            history = history[~history["user_id"].isin(self.erasures.users)] if not history.empty else history
        if not history.empty:
            failed: list = []  # dead-lettered when they first arrived; a restart only skips them
            self.folds.fold_frame(history, failed)
            self.skipped_in_history = len(failed)

    def process_batch(self, events: pd.DataFrame) -> dict[str, int]:
        """Fold a batch and push the newest snapshot per entity to each streamed view."""
        from feast.data_source import PushMode

        events = self.streamed(events)
        failed: list = []
        snapshots = self.folds.fold_frame(events, failed)
        self._dead_letter(events, failed)
        pushed, users = {}, set()
        for view in PUSHED_VIEWS:
            table = snapshots[view.name]
            if table.empty:
                continue
            latest = table.drop_duplicates(view.entity, keep="last")
            self.store.push(f"{view.name}_push", latest, to=PushMode.ONLINE)
            pushed[view.name] = len(latest)
            if view.entity == "user_id":
                users.update(u for u in latest["user_id"] if isinstance(u, str))  # not anonymous events
        if users and self.users_changed is not None:
            self.users_changed(sorted(users))
        return pushed

    def _dead_letter(self, events: pd.DataFrame, failed: list[tuple[int, Exception]]) -> None:
        """Rows the fold refused go to the log's dead letters with the error: the stream goes on."""
        for label, exc in failed:
            body = events.loc[label].to_json(date_format="iso")
            self.log.dead_letter(body, f"stream: cannot fold: {type(exc).__name__}: {exc}")
            self.dead_lettered += 1

    def streamed(self, events: pd.DataFrame) -> pd.DataFrame:
        """The events the stream folds: without those of batch-only users."""
        if self.batch_only is not None and not events.empty:
            events = events[~events["user_id"].map(self._is_batch_only).astype(bool)]
        return events

    def _is_batch_only(self, user: str) -> bool:
        if not isinstance(user, str):  # an anonymous event: no user features to keep
            return False
        if user not in self._batch_only_seen:
            self._batch_only_seen[user] = bool(self.batch_only(user))
        return self._batch_only_seen[user]

    def run_once(self, limit: int = 10_000) -> int:
        """Process everything new in the log (up to `limit`); returns events processed."""
        self._forget_erased()
        start = self.log.committed(self.consumer)
        last, events = self.log.read(start, limit)
        if events.empty:
            return 0
        if self.erasures is not None:
            events = events[~events["user_id"].isin(self.erasures.users)]
        self.process_batch(events)
        self.log.commit(self.consumer, last)  # only after the online write
        return len(events)


def history(log: EventLog, world_dir: Path | None, consumer: str = "online-features") -> pd.DataFrame:
    """What the windows must have seen before the next unprocessed event: the world's
    recorded events (embedded; a cluster replays its retained topic instead) and the log's
    events up to the consumer's committed offset."""
    parts = []
    if world_dir is not None and (world_dir / "events.parquet").exists():
        parts.append(pd.read_parquet(world_dir / "events.parquet"))
    committed = log.committed(consumer)
    if committed:
        parts.append(log.read(0, limit=committed, upto=committed)[1])
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    frame = pd.concat(parts, ignore_index=True)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def tail(processor: StreamProcessor, stop: threading.Event, idle_s: float = 0.005, check_s: float = 1.0) -> None:
    """Process the log as it grows until `stop`: an event is in the online store a few ms
    after its POST was acknowledged. Raises LogUnavailable once the log's file is deleted or
    replaced (checked every `check_s`): tailing a file nobody writes to would look healthy."""
    checked = time.monotonic()
    while not stop.is_set():
        if processor.run_once() == 0:
            stop.wait(idle_s)
        if time.monotonic() - checked >= check_s:
            checked = time.monotonic()
            if problem := processor.log.problem():
                raise LogUnavailable(problem)


def follow(settings, log: EventLog, new_log: bool = False) -> None:
    """Refuse a log other than the one this workspace's processor followed before (deleted
    and recreated: the events acknowledged into the old one are gone, and starting on an
    empty log would hide it), unless `new_log` says that is known and accepted."""
    marker = settings.home / "stream" / "followed_log"
    if marker.exists() and marker.read_text().strip() != log.log_id and not new_log:
        raise LogUnavailable(f"{log.path} is not the event log this stream processor followed (id "
                             f"{marker.read_text().strip()}, now {log.log_id}): it was deleted or replaced, and "
                             "what it held is lost. Restore it, or accept the new log with --new-log")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(log.log_id)


def start_log_over(settings) -> None:
    """Delete the workspace's event log on purpose (a demo or bench starting from an empty
    one), with the processor's record of the log it followed, so `follow` accepts the next."""
    for path in settings.home.glob(settings.event_log.name + "*"):
        path.unlink()
    (settings.home / "stream" / "followed_log").unlink(missing_ok=True)


def run(settings, stop: threading.Event | None = None, log=print, batch_only: Callable[[str], bool] | None = None,
        ready_file: Path | None = None, new_log: bool = False) -> None:
    """`hyperrec stream`: the embedded stream processor, beside the model server.
    `ready_file` is created once the history is folded and tailing starts: until then the
    online store lags every new event (imports and the fold take ~30 s on 2 cores)."""
    from hyperrec.features.store import open_store
    from hyperrec.online.recs_cache import invalidator
    from hyperrec.privacy import ErasureWatch

    stop = stop or threading.Event()
    erasures = ErasureWatch(settings)
    types = role_event_types(settings)
    events = EventLog(settings.event_log, suppress=erasures, event_types=types.known)
    follow(settings, events, new_log)
    processor = StreamProcessor(open_store(settings), events, erasures=erasures, batch_only=batch_only,
                                users_changed=invalidator(settings), engaged=types.engaged)
    started = time.monotonic()
    past = history(events, settings.data_dir / "world")
    processor.warm_start(past)
    log(f"stream processor: {len(past):,} past events folded in {time.monotonic() - started:.1f} s; "
        f"tailing {settings.event_log}")
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.touch()
    tail(processor, stop)
