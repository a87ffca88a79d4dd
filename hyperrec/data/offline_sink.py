"""The offline sink: Kafka events into the offline store a retrain's training set is built from.

`hyperrec sink` consumes the event topic in its own consumer group (`GROUP`) and appends
every valid event to parquet files under `Settings.offline_events_dir`, one folder per hour
of event time (`date=YYYY-MM-DD/hour=HH/`). A file holds one poll's records of one partition
in that hour and is named by the topic, the partition and the first and last offset it
holds: `hyperrec.events+0+00000000000000000120-00000000000000000239.parquet`.

Exactly once per event:
- A file is written to a temporary name, fsynced, renamed into place and its folder fsynced;
  only then are the partition's offsets committed to Kafka. A crash before the rename
  leaves nothing; a crash between the rename and the commit leaves a file whose offsets
  Kafka does not know yet.
- So the files themselves are the sink's offsets: a record at an offset below the last one
  a partition's files hold is skipped (Kafka's committed offset, when further, is where the
  fetch starts anyway), so the sink never writes a record twice.
- The same event_id produced twice (a client's retry after a 503, a replayed import) sits at
  two offsets: `read_offline_events` keeps the first and drops the rest.

With a database (`Settings.database_url`, the cluster) the sink appends to the PostgreSQL
table `offline.events` instead (`PostgresEvents`), next to the Feast offline tables: each
poll's valid events in one transaction, `INSERT ... ON CONFLICT (event_id) DO NOTHING`, and
the offsets committed to Kafka only after it commits. A redelivered record (a lost commit,
a restart, a rebalance) or a repeated event_id is ignored by the key, so the table holds each
event once, and every replica writes to the same table.

What the sink does not keep: records that fail the event door (the stream processor
dead-letters them, and the server already sent its own to the dead-letter topic) and
events of erased users (dropped and counted). `hyperrec.training.retrain.snapshot_world`
adds these events to the world a retrain learns from (`read_sunk_events`), and a stream
consumer's rebuild reads those the topic's retention trimmed (`sunk_events_below`); `hyperrec privacy
erase` removes a user's rows from them like from every parquet file under home (and from the
table, hyperrec.features.postgres.erase_user).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Container
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from hyperrec.data.eventlog import INVALID, erased_now, validate_event
from hyperrec.data.kafka_log import TOPIC
from hyperrec.data.schemas import EVENT_TYPES

log = logging.getLogger(__name__)
GROUP = "hyperrec-offline-sink"
COLUMNS = ("event_id", "user_id", "item_id", "event_type", "ts", "dwell_s", "rating", "session_id", "device",
           "request_id")


def _schema():
    import pyarrow as pa

    text = {"event_id", "user_id", "item_id", "event_type", "session_id", "device", "request_id"}
    return pa.schema([(c, pa.string() if c in text else pa.timestamp("us", tz="UTC") if c == "ts"
                       else pa.float64()) for c in COLUMNS]
                     + [("kafka_partition", pa.int32()), ("kafka_offset", pa.int64())])


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}+{partition}+{first:020d}-{last:020d}.parquet"


def written_upto(root: Path, topic: str, partition: int) -> int | None:
    """The next offset of `partition` after the last one the sink's files hold (None: no file)."""
    ends = [int(p.stem.rsplit("-", 1)[1]) for p in Path(root).glob(f"date=*/hour=*/{topic}+{partition}+*.parquet")]
    return max(ends) + 1 if ends else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(table, path: Path) -> None:
    """Write a parquet file so that once this returns it survives a crash: a temporary name,
    fsync, rename, fsync of the folder (and of a folder just made)."""
    import pyarrow.parquet as pq

    made = not path.parent.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)
    if made:
        _fsync_dir(path.parent.parent)
        _fsync_dir(path.parent.parent.parent)


def read_offline_events(root: Path) -> pd.DataFrame:
    """Every event the sink wrote, each event_id once (its first offset), sorted by time;
    the columns of a world's events plus request_id, session_id and device."""
    import pyarrow.parquet as pq

    files = sorted(Path(root).glob("date=*/hour=*/*.parquet"))
    if not files:
        return pd.DataFrame(columns=list(COLUMNS))
    return _first_of_each(pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True))[list(COLUMNS)]


def _first_of_each(frame: pd.DataFrame) -> pd.DataFrame:
    """Each event_id once, at its first offset, in time order."""
    frame = frame.sort_values(["kafka_partition", "kafka_offset"], kind="stable").drop_duplicates("event_id")
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


EVENTS_TABLE = "events"  # in hyperrec.features.postgres.SCHEMA, next to the Feast offline tables
_PG_COLUMNS = {"event_id": "text PRIMARY KEY", "user_id": "text NOT NULL", "item_id": "text",
               "event_type": "text NOT NULL", "ts": "timestamptz NOT NULL", "dwell_s": "double precision",
               "rating": "double precision", "session_id": "text", "device": "text", "request_id": "text",
               "kafka_partition": "integer", "kafka_offset": "bigint"}


class PostgresEvents:
    """The offline record of live events in PostgreSQL: `offline.events`, keyed by event_id."""

    def __init__(self, database_url: str):
        import psycopg
        from psycopg import sql

        from hyperrec.features.postgres import SCHEMA

        self.conn = psycopg.connect(database_url)
        self.table = sql.Identifier(SCHEMA, EVENTS_TABLE)
        with self.conn.transaction():
            self.conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
            self.conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.table, sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in _PG_COLUMNS.items())))
            self.conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS events_ts ON {} (ts)").format(self.table))
            self.conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS events_offsets ON {} (kafka_partition, kafka_offset)")
                              .format(self.table))

    def append(self, rows: list[dict]) -> int:
        """Insert the rows (first offset wins within the batch) in one transaction; returns how
        many were new (an event_id already in the table is skipped)."""
        from psycopg import sql

        if not rows:
            return 0
        columns = list(_PG_COLUMNS)
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS sink_batch (LIKE {}) ON COMMIT DELETE ROWS")
                        .format(self.table))
            with cur.copy(sql.SQL("COPY sink_batch ({}) FROM STDIN").format(names)) as copy:
                for row in rows:
                    copy.write_row([row.get(c) for c in columns])
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT DISTINCT ON (event_id) {} FROM sink_batch "
                                "ORDER BY event_id, kafka_partition, kafka_offset ON CONFLICT (event_id) DO NOTHING")
                        .format(self.table, names, names))
            return cur.rowcount

    def close(self) -> None:
        self.conn.close()


def read_postgres_events(database_url: str) -> pd.DataFrame:
    """Every event in `offline.events` (empty if the sink never ran), sorted by time; the
    columns of `read_offline_events`."""
    import psycopg
    from psycopg import sql

    from hyperrec.features.postgres import SCHEMA

    with psycopg.connect(database_url) as conn:
        if not _table_exists(conn):
            return pd.DataFrame(columns=list(COLUMNS))
        cur = conn.execute(sql.SQL("SELECT {} FROM {} ORDER BY ts, kafka_partition, kafka_offset").format(
            sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), sql.Identifier(SCHEMA, EVENTS_TABLE)))
        frame = pd.DataFrame(cur.fetchall(), columns=list(COLUMNS))
    return _typed(frame)


def _table_exists(conn) -> bool:
    """Whether the sink ever made `offline.events` (it creates the table on start)."""
    from hyperrec.features.postgres import SCHEMA

    return conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{EVENTS_TABLE}",)).fetchone()[0] is not None


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    for c in ("dwell_s", "rating"):
        frame[c] = frame[c].astype("float64")
    return frame


def sunk_events_below(settings, topic: str, before: dict[int, int]) -> pd.DataFrame:
    """The sunk events of each partition `p` of `before` at offsets below `before[p]`, each
    event_id once (its first offset), sorted by time, with their `kafka_partition`: once the
    topic's retention has trimmed a partition to `before[p]`, the only copy of those events
    (hyperrec.features.kafka_source rebuilds a partition's state from them). The table holds
    the sink's one topic; the files are named by theirs."""
    columns = [*COLUMNS, "kafka_partition", "kafka_offset"]
    wanted = {int(p): int(o) for p, o in before.items() if o}
    if not wanted:
        return pd.DataFrame(columns=columns)
    if settings.database_url:
        import psycopg
        from psycopg import sql

        from hyperrec.features.postgres import SCHEMA

        with psycopg.connect(settings.database_url) as conn:
            if not _table_exists(conn):
                return pd.DataFrame(columns=columns)
            cur = conn.execute(sql.SQL(
                "SELECT {} FROM {} JOIN unnest(%s::int[], %s::bigint[]) AS upto(p, o) "
                "ON kafka_partition = upto.p AND kafka_offset < upto.o").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(SCHEMA, EVENTS_TABLE)),
                (list(wanted), list(wanted.values())))
            frame = pd.DataFrame(cur.fetchall(), columns=columns)
    else:
        import pyarrow.parquet as pq

        files = [f for p, o in wanted.items() for f in Path(settings.offline_events_dir).glob(
            f"date=*/hour=*/{topic}+{p}+*.parquet") if int(f.stem.rsplit("+", 1)[1].split("-")[0]) < o]
        frame = pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True) if files else \
            pd.DataFrame(columns=columns)
        frame = frame[frame["kafka_offset"] < frame["kafka_partition"].map(wanted)]
    return _typed(_first_of_each(frame))[columns]


def read_sunk_events(settings) -> pd.DataFrame:
    """What the offline sink of this workspace's mode holds: the table with a database_url,
    else the parquet files."""
    if settings.database_url:
        return read_postgres_events(settings.database_url)
    return read_offline_events(settings.offline_events_dir)


@dataclass
class SinkResult:
    received: int = 0
    written: int = 0  # events in files written by this poll (with a table: rows new to it)
    invalid: int = 0
    suppressed: int = 0
    files: list[Path] = field(default_factory=list)


class OfflineSink:
    def __init__(self, bootstrap: str, root: Path, topic: str = TOPIC, group_id: str = GROUP,
                 suppress: Container[str] = frozenset(), event_types: Collection[str] = EVENT_TYPES,
                 database_url: str | None = None, **consumer_config):
        """Files under `root`, or with `database_url` rows of the PostgreSQL table."""
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        self.root, self.topic, self.suppress, self.event_types = Path(root), topic, suppress, tuple(event_types)
        self.events = PostgresEvents(database_url) if database_url else None
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                      auto_offset_reset="earliest", **consumer_config)
        self._upto: dict = {}  # partition -> next offset after what its files hold (None: no file)
        upto = self._upto

        class ForgetOnAssign(ConsumerRebalanceListener):  # runs on the consumer's IO thread: no blocking calls
            def on_partitions_revoked(self, revoked):
                pass

            def on_partitions_assigned(self, assigned):
                for tp in assigned:  # another member may have written since: read the files again
                    upto.pop(tp, None)

        self.consumer.subscribe([topic], listener=ForgetOnAssign())

    def _written_upto(self, tp) -> int | None:
        if self.events is not None:  # the table's key skips what it holds
            return None
        if tp not in self._upto:
            self._upto[tp] = written_upto(self.root, tp.topic, tp.partition)
        return self._upto[tp]

    def run_once(self, timeout_ms: int = 1000, max_records: int = 10_000,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> SinkResult:
        """Poll once, write each partition's valid events into files per hour, fsync (or insert
        them all into the table in one transaction), and only then commit the offsets."""
        from kafka.structs import OffsetAndMetadata

        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        result, commits, at, pending = SinkResult(), {}, now(), []
        for tp, records in batches.items():
            upto = self._written_upto(tp)
            if upto is not None:  # the files hold these already (the commit after them was lost)
                records = [r for r in records if r.offset >= upto]
            if not records:
                continue
            rows, erased = [], erased_now(self.suppress)  # the list read once per partition's batch
            for r in records:
                result.received += 1
                try:
                    event = validate_event(r.value, at, self.event_types)
                except INVALID:
                    result.invalid += 1
                    continue
                if event.user_id in erased:
                    result.suppressed += 1
                    continue
                rows.append({**event.model_dump(include=set(COLUMNS)), "kafka_partition": tp.partition,
                             "kafka_offset": r.offset})
            if self.events is not None:
                pending += rows
            else:
                result.files += self._write(tp, rows, records[0].offset, records[-1].offset)
                result.written += len(rows)
                self._upto[tp] = records[-1].offset + 1
            commits[tp] = OffsetAndMetadata(records[-1].offset + 1, None, -1)
        if pending:
            result.written += self.events.append(pending)
        if commits:
            from kafka.errors import CommitFailedError

            try:
                self.consumer.commit(commits)
            except CommitFailedError as exc:  # rebalanced away: the files (or the table) already hold the batch
                log.warning("offset commit refused after a rebalance (%s); the batch is stored", exc)
        return result

    def _write(self, tp, rows: list[dict], first: int, last: int) -> list[Path]:
        """One file per hour of event time, each named by the poll's offset range of the
        partition (its rows are a subset of that range)."""
        import pyarrow as pa

        if not rows:
            return []
        frame = pd.DataFrame(rows)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        out = []
        for hour, part in frame.groupby(frame["ts"].dt.floor("h"), sort=True):
            path = (self.root / f"date={hour:%Y-%m-%d}" / f"hour={hour:%H}"
                    / file_name(tp.topic, tp.partition, first, last))
            write_durably(pa.Table.from_pandas(part.reset_index(drop=True), schema=_schema(), preserve_index=False),
                          path)
            out.append(path)
        return out

    def close(self) -> None:
        self.consumer.close()
        if self.events is not None:
            self.events.close()


def run(settings, bootstrap: str, topic: str = TOPIC, group_id: str = GROUP, stop: threading.Event | None = None,
        log=print, ready_file: Path | None = None, **consumer_config) -> None:
    """`hyperrec sink`: Kafka -> offline event files (with a database_url: the table), until
    `stop`. `ready_file` is created once the sink holds partitions of the topic."""
    from hyperrec.data.world_db import role_event_types
    from hyperrec.privacy import ErasureWatch

    stop = stop or threading.Event()
    sink = OfflineSink(bootstrap, settings.offline_events_dir, topic, group_id,
                       suppress=ErasureWatch(settings), event_types=role_event_types(settings).known,
                       database_url=settings.database_url, **consumer_config)
    where = f"PostgreSQL table {sink.events.table.as_string(sink.events.conn)}" if sink.events else \
        settings.offline_events_dir
    log(f"offline sink on {bootstrap} topic {topic} group {group_id} -> {where}")
    try:
        while not stop.is_set():
            result = sink.run_once(timeout_ms=500)
            if result.received:
                log(f"{time.strftime('%H:%M:%S')} wrote {result.written} events"
                    + ("" if sink.events else f" in {len(result.files)} files")
                    + (f" ({result.invalid} invalid, {result.suppressed} suppressed)"
                       if result.invalid or result.suppressed else ""))
            if ready_file is not None and not ready_file.exists() and sink.consumer.assignment():
                ready_file.touch()
    finally:
        sink.close()
