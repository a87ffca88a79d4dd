"""Cluster mode of the stream processor: the same fold behind Kafka consumers.

A consumer group (`GROUP`) of any number of replicas shares the event topic's partitions. The
topic is keyed by user, so a user's events are all in one partition and the per-user window
state can follow the partition (`PartitionFollower`):
- Assigned a partition, a member rebuilds its users' state without pushing: the world's
  recorded history of those users, the offline sink's copy of the events the topic's
  retention trimmed from the partition, then the partition's records from its first retained
  offset up to the group's committed offset. Only then does it fold and push what follows.
- A partition still owned after a rebalance, whose committed offset did not move, keeps its
  state; one that went elsewhere is dropped.
- Each poll: a record below the partition's applied offset is already in the state and is
  skipped; the others pass the event door (schema, erased users, dedupe on `event_id`
  against the partition's newest ids: `RecentIds`), are folded and pushed, and only then
  are the offsets committed. A member that dies between its push and its commit leaves the
  batch to the next owner, which folds it once into its rebuilt state; pushes are snapshot
  upserts, so the online store ends right. Each event is folded once into one member's state.
Item popularity counts every user's events, so it cannot be split by user: each replica runs a
second follower in the group `GROUP + ".items"`, whose assignor gives every partition to one
member; the others stand by, and one of them rebuilds and takes over when the owner leaves.
The two followers poll from a thread each (`StreamReplica.serve`): a follower waiting in its
group's join must not keep the other from answering its own.

The members write no file: the state is in memory, dead letters go to the dead-letter topic.
They read the workspace (event types, the erasure list, Feast's registry) and the world's history
(the database's world when one is published: hyperrec.data.world_db.recorded_events).

`KafkaEventConsumer` is the single-consumer mode, for brokers without consumer groups: a SQLite
event log of its own holds the dedupe and, with explicit partitions, the offsets.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from hyperrec.data.eventlog import INVALID, AppendResult, _claimed_user, _describe, erased_now, validate_event
from hyperrec.data.kafka_log import TOPIC  # noqa: F401  (one typed topic, keyed by user; the server produces to it)
from hyperrec.data.schemas import Event
from hyperrec.features.stream import StreamProcessor

log = logging.getLogger(__name__)
GROUP = "hyperrec-online-features"


class KafkaEventConsumer:
    def __init__(self, processor: StreamProcessor, bootstrap: str, topic: str, partitions: list[int] | None = None,
                 group_id: str | None = None, check: Callable[[Event], str | None] | None = None,
                 **consumer_config):
        """`consumer_config`: more KafkaConsumer settings, e.g. session_timeout_ms and
        max_poll_interval_ms, which bound how long a dead member holds its partitions."""
        from kafka import KafkaConsumer, TopicPartition

        self.processor, self.log, self.check = processor, processor.log, check
        self.group_id = group_id
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", **consumer_config)
        if group_id is not None:
            self.consumer.subscribe([topic])
        else:
            self.consumer.assign([TopicPartition(topic, p) for p in (partitions or [0])])
            for tp in self.consumer.assignment():
                self.consumer.seek(tp, self.log.committed(self._offset_key(tp)))

    @staticmethod
    def _offset_key(tp) -> str:
        return f"kafka:{tp.topic}:{tp.partition}"

    def run_once(self, timeout_ms: int = 1000, max_records: int = 10_000) -> AppendResult:
        """Poll once; ingest, fold and push; then commit. Returns the ingestion counts."""
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = [r for batch in batches.values() for r in batch]  # in order within each partition
        result = self.log.append([r.value for r in records], check=self.check)
        self.processor.run_once()  # pushes online before any offset moves
        next_offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
        if self.group_id is not None and next_offsets:
            from kafka.errors import CommitFailedError
            from kafka.structs import OffsetAndMetadata

            try:
                self.consumer.commit({tp: OffsetAndMetadata(o, None, -1) for tp, o in next_offsets.items()})
            except CommitFailedError as exc:  # rebalanced away mid-batch: the new owner replays it
                log.warning("offset commit refused after a rebalance (%s); the batch will be replayed", exc)
        else:
            for tp, offset in next_offsets.items():
                self.log.commit(self._offset_key(tp), offset)
        return result

    def close(self) -> None:
        self.consumer.close()


def partition_of(user_id: str, partitions: int) -> int:
    """The partition a record keyed by `user_id` goes to: the producers' default partitioner
    (murmur2 of the key, as Kafka's Java client)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def one_owner_assignor():
    """A group assignor that gives every partition to one member (the others stand by),
    preferring the member that owned them before, so a rebalance does not move the state."""
    from kafka.coordinator.assignors.abstract import ConsumerProtocolAssignment, ConsumerProtocolSubscription
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    class OneOwner(RangePartitionAssignor):
        name = "hyperrec-one-owner"
        owner = False  # this member holds the partitions now

        def metadata(self, topics):
            return ConsumerProtocolSubscription(self.version, list(topics), b"owner" if self.owner else b"")

        def assign(self, cluster, members):
            chosen = sorted(members, key=lambda m: (m.metadata.user_data != b"owner", m.member_id))[0]
            return {m.member_id: ConsumerProtocolAssignment(self.version, sorted(
                (t, sorted(cluster.partitions_for_topic(t) or ())) for t in m.metadata.topics)
                if m is chosen else [], b"") for m in members}

        def on_assignment(self, assignment, generation):
            self.owner = bool(assignment.partitions())

    return OneOwner()


class RecentIds:
    """The event ids a partition folded, the newest `capacity` of them: the dedupe of repeats
    the broker cannot refuse (a producer's retry, a client sending an event again). Offsets
    already keep a record from being folded twice; these catch the same event in two records,
    which come close together. A set of every id grew for as long as the consumer ran (about
    140 bytes an id); a repeat older than the last `capacity` of its partition's events is
    folded again."""

    def __init__(self, capacity: int = 500_000):
        self.capacity = capacity
        self._ids: dict[str, None] = {}  # insertion-ordered: the oldest first

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]


@dataclass
class _Partition:
    applied: int = 0  # the next offset to fold: every record below it is in the state
    generation: int = 0  # which state this is: a rebuild starts a new one
    users: set = field(default_factory=set)  # whose state came from this partition
    event_ids: RecentIds = field(default_factory=RecentIds)  # the dedupe: a user's events are all here


class _NoLetters:
    def dead_letter(self, raw, error: str) -> None:
        """The user follower already dead-letters the records both followers read."""


class PartitionFollower:
    def __init__(self, processor: StreamProcessor, bootstrap: str, topic: str, group_id: str,
                 history: pd.DataFrame | None = None, event_types: Collection[str] | None = None,
                 suppress: Container[str] = frozenset(), check: Callable[[Event], str | None] | None = None,
                 journal: Callable[[dict], None] | None = None,
                 trimmed: Callable[[dict[int, int]], pd.DataFrame] | None = None, **consumer_config):
        """One member's share of the stream: the partitions the group gives it, and the state
        that follows them (the module's docstring says how). `processor.folds.scope` says
        which: "users" shares the partitions among the members, "items" gives them all to
        one. `history`: the world's recorded events, folded before the topic's. Dead letters
        go to `processor.log`. `journal(entry)`: told the event ids of every fold, with the
        partition, the state's generation and whether it was a rebuild or a live (pushed)
        fold: an audit of exactly-once (`hyperrec stream --journal`). `trimmed(before)`: the
        offline sink's events of each partition below `before[partition]`, the offset the
        topic's retention has trimmed it to (hyperrec.data.offline_sink.sunk_events_below)."""
        from kafka import ConsumerRebalanceListener, KafkaConsumer
        from kafka.coordinator.assignors.range import RangePartitionAssignor

        from hyperrec.data.schemas import EVENT_TYPES

        self.processor, self.topic, self.group_id = processor, topic, group_id
        self.scope = processor.folds.scope
        self.history = history if history is not None else pd.DataFrame()
        self.event_types = tuple(event_types or EVENT_TYPES)
        self.suppress, self.check, self.journal, self.trimmed = suppress, check, journal, trimmed
        self._generations = 0
        self.partitions: dict = {}  # TopicPartition -> _Partition
        self.counts: Counter = Counter()
        self.rebuilds: list[dict] = []  # per rebuild: partitions, records, history rows, seconds
        self._assigned: set | None = None  # set by the listener, reconciled at the next poll
        self._history_partition: tuple[int, pd.Series] | None = None
        strategy = [one_owner_assignor()] if self.scope == "items" else [RangePartitionAssignor]
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", partition_assignment_strategy=strategy,
                                      **consumer_config)
        # reads partitions for rebuilds, outside the group
        self.reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        follower = self

        class Listener(ConsumerRebalanceListener):  # on the client's event loop: it records, the next poll acts
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                follower._assigned = set(assigned)

        self.consumer.subscribe([topic], listener=Listener())

    def run_once(self, timeout_ms: int = 1000, max_records: int = 10_000) -> Counter:
        """Poll once; rebuild newly assigned partitions; fold and push the new records; then
        commit. Returns this poll's counts."""
        self.processor._forget_erased()
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        if self._assigned is not None:
            assigned, self._assigned = self._assigned, None
            self._reconcile(assigned)
        counts: Counter = Counter()
        events, next_offsets, folded = [], {}, {}
        erased = erased_now(self.suppress) if batches else self.suppress  # the list read once per poll
        for tp, batch in batches.items():
            part = self.partitions[tp]
            for record in batch:
                counts["received"] += 1
                if record.offset < part.applied:
                    counts["already_applied"] += 1
                    continue
                event = self._door(part, record.value, counts, dead_letter=True, erased=erased)
                if event is not None:
                    events.append(event)
                    folded.setdefault(tp, []).append(event.event_id)
                    if self.scope == "users":
                        part.users.add(event.user_id)
            next_offsets[tp] = batch[-1].offset + 1
        if events:
            self.processor.process_batch(_frame(events))  # folds and pushes before any offset moves
            counts["folded"] += len(events)
            for tp, ids in folded.items():
                self._journal("live", tp, self.partitions[tp], ids)
        for tp, offset in next_offsets.items():
            self.partitions[tp].applied = max(self.partitions[tp].applied, offset)
        if next_offsets:
            self._commit(next_offsets)
        self.counts.update(counts)
        return counts

    def _journal(self, kind: str, tp, part: _Partition, event_ids: list[str]) -> None:
        if self.journal is not None and event_ids:
            self.journal({"scope": self.scope, "kind": kind, "partition": tp.partition,
                          "generation": part.generation, "event_ids": event_ids})

    def _commit(self, offsets: dict) -> None:
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata

        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, None, -1) for tp, o in offsets.items()})
        except CommitFailedError as exc:  # rebalanced away mid-batch: the partitions' next owner replays it
            log.warning("offset commit refused after a rebalance (%s); the batch will be replayed", exc)
            self.counts["commits_refused"] += 1

    def _door(self, part: _Partition, raw, counts: Counter, dead_letter: bool, erased) -> Event | None:
        """The event in `raw`, or None (dead-lettered, one of an `erased` user's, or a repeat)."""
        try:
            event = validate_event(raw, datetime.now(UTC), self.event_types, self.check)
        except INVALID as exc:
            if _claimed_user(raw) in erased:
                counts["suppressed"] += 1
            else:
                counts["dead_lettered"] += 1
                if dead_letter:
                    self.processor.log.dead_letter(raw, f"stream: {_describe(exc)}")
            return None
        if event.user_id in erased:
            counts["suppressed"] += 1
            return None
        if event.event_id in part.event_ids:
            counts["duplicates"] += 1
            return None
        part.event_ids.add(event.event_id)
        return event

    def _reconcile(self, assigned: set) -> None:
        """After a rebalance: drop the state of partitions gone elsewhere, keep that of
        partitions still ours whose committed offset is where we left it, rebuild the rest."""
        committed = {tp: self.consumer.committed(tp) for tp in assigned}
        gone = [tp for tp in self.partitions if tp not in assigned]
        stale = [tp for tp in assigned
                 if tp not in self.partitions or self.partitions[tp].applied != (committed[tp] or 0)]
        if self.scope == "items" and (gone or stale):  # one state for all partitions: rebuilt whole
            gone, stale = list(self.partitions), sorted(assigned)
        for tp in gone + [tp for tp in stale if tp in self.partitions]:
            self._drop(tp)
        if stale:
            self._rebuild(sorted(stale), {tp: committed[tp] for tp in stale})

    def _drop(self, tp) -> None:
        part = self.partitions.pop(tp)
        if self.scope == "users":
            self.processor.folds.forget(part.users)
        else:
            self.processor.folds.items.state.clear()

    def _rebuild(self, tps: list, committed: dict) -> None:
        """Fold, without pushing, the history of `tps`' users, then each partition's events
        below its committed offset: those the retention trimmed from the topic (from the
        offline sink) and the records it still holds."""
        started = time.monotonic()
        counts: Counter = Counter()
        frames, parts = [], {}
        erased = erased_now(self.suppress)
        first = self._first_offsets(tps)
        past = self._history_of([tp.partition for tp in tps])
        lost = self._trimmed_events(first, erased, known=past)
        for tp, raws in self._read(committed, first).items():
            self._generations += 1
            part = parts[tp] = _Partition(applied=committed[tp] or 0, generation=self._generations)
            mine = lost[lost["kafka_partition"] == tp.partition]
            for event_id in mine["event_id"]:  # a repeat of a trimmed event in the records is one
                part.event_ids.add(event_id)
            if not mine.empty:
                self._journal("rebuild", tp, part, mine["event_id"].tolist())
                frames.append(self.processor.streamed(mine.drop(columns=["kafka_partition", "kafka_offset"])))
                if self.scope == "users":
                    part.users |= set(mine["user_id"])
            events = [e for e in (self._door(part, raw, counts, dead_letter=False, erased=erased) for raw in raws)
                      if e is not None]
            self._journal("rebuild", tp, part, [e.event_id for e in events])
            if self.scope == "users":
                part.users |= {e.user_id for e in events}
            frames.append(self.processor.streamed(_frame(events)))
        if self.scope == "users" and not past.empty:
            by_partition = self._partition_of_users(past)
            for tp, part in parts.items():
                part.users |= set(past["user_id"][by_partition == tp.partition])
        frames = [f.dropna(axis=1, how="all") for f in (past, *frames) if not f.empty]  # no all-NA column
        records = sum(len(f) for f in frames) - len(past)
        if frames:
            failed: list = []  # dead-lettered when they first arrived: a rebuild only skips them
            self.processor.folds.fold_frame(pd.concat(frames, ignore_index=True), failed)
        self.partitions.update(parts)
        self.rebuilds.append({"partitions": [tp.partition for tp in tps], "records": records, "history": len(past),
                              "trimmed": len(lost), "seconds": time.monotonic() - started, **counts})
        log.info("%s state of partitions %s rebuilt: %d records (%d trimmed from the topic) and %d history rows"
                 " in %.2f s", self.scope, [tp.partition for tp in tps], records, len(lost), len(past),
                 time.monotonic() - started)

    def _first_offsets(self, tps: list) -> dict:
        """Each partition's first offset the broker still holds (above 0 once retention trimmed it)."""
        return self.reader.beginning_offsets(list(tps))

    def _trimmed_events(self, first: dict, erased, known: pd.DataFrame) -> pd.DataFrame:
        """The offline sink's events below each partition's `first` offset, less erased users'
        and those the world's history holds already (a world published from a snapshot)."""
        lost = self.trimmed({tp.partition: o for tp, o in first.items()}) if self.trimmed else None
        if lost is None or lost.empty:
            return pd.DataFrame(columns=["event_id", "user_id", "kafka_partition"])
        lost = lost[~lost["user_id"].isin(erased)] if len(erased) else lost
        if "event_id" in known:
            lost = lost[~lost["event_id"].isin(known["event_id"])]
        return lost.dropna(axis=1, how="all")

    def _read(self, upto: dict, first: dict, patience_s: float = 30.0) -> dict:
        """Each partition's record values from `first[tp]` up to (not including) `upto[tp]`."""
        wanted = {tp: o for tp, o in upto.items() if o}
        out = {tp: [] for tp in upto}
        if not wanted:
            return out
        self.reader.assign(list(wanted))
        for tp in wanted:
            self.reader.seek(tp, first[tp])
        deadline = time.monotonic() + patience_s
        while any(self.reader.position(tp) < o for tp, o in wanted.items()):
            got = self.reader.poll(timeout_ms=500, max_records=50_000)
            for tp, batch in got.items():
                out[tp] += [r.value for r in batch if r.offset < wanted[tp]]
            if got:
                deadline = time.monotonic() + patience_s
            elif time.monotonic() > deadline:
                raise TimeoutError(f"rebuilding {sorted(wanted)}: no records from the broker for {patience_s:g} s")
        self.reader.assign([])
        return out

    def _history_of(self, partitions: list[int]) -> pd.DataFrame:
        """The history rows of those partitions' users (items: all of it), erased users left out."""
        past = self.history
        if past.empty:
            return past
        if self.scope == "users":
            past = past[self._partition_of_users(past).isin(partitions)]
        erased = getattr(self.suppress, "users", self.suppress)
        return past[~past["user_id"].isin(erased)] if len(erased) else past

    def _partition_of_users(self, frame: pd.DataFrame) -> pd.Series:
        n = len(self.consumer.partitions_for_topic(self.topic) or ())
        if self._history_partition is None or self._history_partition[0] != n:
            users = self.history["user_id"].astype(str)
            codes = {u: partition_of(u, n) for u in users.unique()}
            self._history_partition = (n, users.map(codes))
        return self._history_partition[1].loc[frame.index]

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.reader.close(autocommit=False)


def _frame(events: list[Event]) -> pd.DataFrame:
    if not events:
        return pd.DataFrame()
    frame = pd.DataFrame([e.model_dump() for e in events])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


class FoldJournal:
    """`PartitionFollower`'s journal as JSON lines in a file of the replica's own, each line
    flushed as it is written (a replica killed mid-stream keeps what it folded)."""

    def __init__(self, path):
        from pathlib import Path

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 (open for the replica's life)
        self._lock = threading.Lock()
        self.replica = uuid.uuid4().hex[:12]  # generations count per process: a restart is another replica

    def __call__(self, entry: dict) -> None:
        import json

        with self._lock:
            self._file.write(json.dumps({"replica": self.replica, **entry}) + "\n")

    def close(self) -> None:
        self._file.close()


class StreamReplica:
    def __init__(self, settings, bootstrap: str, topic: str = TOPIC, group_id: str = GROUP,
                 batch_only: Callable[[str], bool] | None = None, journal=None, **consumer_config):
        """One replica of `hyperrec stream --kafka`: a user follower in `group_id` and an item
        follower in `group_id + ".items"`, over one online store and one erasure watch.
        `journal`: a path where both followers record every fold (`FoldJournal`)."""
        from hyperrec.data.kafka_log import KafkaEventLog
        from hyperrec.data.offline_sink import sunk_events_below
        from hyperrec.data.world_db import recorded_events, role_event_types
        from hyperrec.features.store import open_store
        from hyperrec.online.recs_cache import invalidator
        from hyperrec.privacy import ErasureWatch

        self.erasures = ErasureWatch(settings)
        types = role_event_types(settings)
        store = open_store(settings)
        self.letters = KafkaEventLog(bootstrap)  # its dead-letter topic: no file of ours
        past = recorded_events(settings)
        if not past.empty:
            past["ts"] = pd.to_datetime(past["ts"], utc=True)
        self.erasures.poll()  # everyone erased so far: their history is left out, nothing to forget yet
        users = StreamProcessor(store, self.letters, erasures=self.erasures, batch_only=batch_only,
                                users_changed=invalidator(settings), engaged=types.engaged, scope="users")
        items = StreamProcessor(store, _NoLetters(), batch_only=batch_only, engaged=types.engaged, scope="items")
        self.journal = FoldJournal(journal) if journal else None
        common = {"history": past, "event_types": types.known, "suppress": self.erasures, "journal": self.journal,
                  "trimmed": lambda before: sunk_events_below(settings, topic, before), **consumer_config}
        self.users = PartitionFollower(users, bootstrap, topic, group_id, **common)
        self.items = PartitionFollower(items, bootstrap, topic, f"{group_id}.items", **common)

    def run_once(self, timeout_ms: int = 250) -> Counter:
        """Poll each follower once, each for up to `timeout_ms`: a group join needs several
        round trips, and polls much shorter than ~200 ms restart it without end."""
        counts = self.users.run_once(timeout_ms=timeout_ms)
        self.items.run_once(timeout_ms=timeout_ms)
        return counts

    def serve(self, stop: threading.Event, timeout_ms: int = 500) -> None:
        """Poll each follower from a thread of its own until `stop` (or until one fails,
        which stops the other and is raised). Polled in turn from one thread, a follower
        waiting in its group's join held up the other: replica A's users follower waited
        for B's users member to rejoin while B's thread waited, in its items join, for A's
        items member, which could not poll; `hyperrec bench cluster` lost events to it."""
        errors: list[BaseException] = []

        def follow(follower: PartitionFollower) -> None:
            try:
                while not stop.is_set():
                    follower.run_once(timeout_ms=timeout_ms)
            except BaseException as exc:  # noqa: BLE001  (raised in the caller's thread below)
                errors.append(exc)
                stop.set()

        threads = [threading.Thread(target=follow, args=(f,), name=f"follow-{f.scope}", daemon=True)
                   for f in (self.users, self.items)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.5)
        finally:  # interrupted too: the followers stop before anyone closes their consumers
            stop.set()
            for thread in threads:
                thread.join(30)
        if errors:
            raise errors[0]

    def close(self) -> None:
        self.users.close()
        self.items.close()
        self.letters.close()
        self.erasures.close()
        if self.journal is not None:
            self.journal.close()


def run(settings, bootstrap: str, topic: str = TOPIC, group_id: str | None = GROUP,
        stop: threading.Event | None = None, log=print, batch_only=None, journal=None) -> None:
    """`hyperrec stream --kafka`: the cluster's event consumer, one per replica of the
    Deployment, sharing the topic's partitions through the consumer group (`group_id`; None:
    partition 0 alone, with the workspace's event log)."""
    stop = stop or threading.Event()
    if group_id is None:
        return _run_alone(settings, bootstrap, topic, stop, log, batch_only)
    replica = StreamReplica(settings, bootstrap, topic, group_id, batch_only=batch_only, journal=journal)
    log(f"kafka consumer on {bootstrap} topic {topic} group {group_id} (item popularity: {group_id}.items)")
    try:
        replica.serve(stop)
    finally:
        replica.close()


def _run_alone(settings, bootstrap: str, topic: str, stop: threading.Event, log, batch_only) -> None:
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.world_db import role_event_types
    from hyperrec.features.store import open_store
    from hyperrec.features.stream import history
    from hyperrec.online.recs_cache import invalidator
    from hyperrec.privacy import ErasureWatch

    erasures = ErasureWatch(settings)
    types = role_event_types(settings)
    events = EventLog(settings.event_log, suppress=erasures, event_types=types.known)
    processor = StreamProcessor(open_store(settings), events, erasures=erasures, batch_only=batch_only,
                                users_changed=invalidator(settings), engaged=types.engaged)
    processor.warm_start(history(events, settings.data_dir / "world"))
    consumer = KafkaEventConsumer(processor, bootstrap, topic)
    log(f"kafka consumer on {bootstrap} topic {topic} partition 0 (offsets in {settings.event_log})")
    try:
        while not stop.is_set():
            consumer.run_once(timeout_ms=500)
    finally:
        consumer.close()
