"""`hyperrec data import`: a user's event log, catalog and profiles, described by a mapping
file (hyperrec.data.mapping), become a world every other verb reads.

Files are read in chunks; each chunk is mapped onto the schemas and checked with the same
table validator the generator and loaders use. Rows that cannot be used go to the world's
`dead_letters.jsonl` with their row number, raw values and reason, and are counted per
reason in `import_report.json`: nothing is dropped silently. Events without an id get one
derived from their content, so importing the same file twice (or a file that overlaps an
earlier one) into the same world stores every event once.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hyperrec.data.event_types import EventTypes
from hyperrec.data.mapping import ItemSource, Mapping, TableSource, UserSource, load_mapping
from hyperrec.data.schemas import (
    EARLIEST_TS,
    Event,
    FieldError,
    Item,
    Record,
    SchemaError,
    User,
    check_frame,
    validate_frame,
)
from hyperrec.data.world import World, load_world, save_tables

CHUNK_ROWS = 100_000
EARLIEST = pd.Timestamp(EARLIEST_TS)  # before it: a unit mistake, not an event
FUTURE_SLACK = timedelta(days=1)  # clocks drift; a week-ahead timestamp is a bug
SAMPLE_ROWS = 10  # row numbers kept per reason in the report
Progress = Callable[[str, int, int], None]  # (table, done, total) in bytes or rows
# events are kept as Arrow columns between chunks: strings cost their bytes, not a Python object each
EVENT_ARROW = pa.schema([("event_id", pa.string()), ("user_id", pa.string()), ("item_id", pa.string()),
                         ("event_type", pa.string()), ("ts", pa.timestamp("ns", tz="UTC")),
                         ("dwell_s", pa.float64()), ("rating", pa.float64()), ("session_id", pa.string()),
                         ("device", pa.string()), ("request_id", pa.string())])
assert EVENT_ARROW.names == list(Event.model_fields), "EVENT_ARROW must follow the Event schema"


class ImportFailed(RuntimeError):
    """Nothing usable could be imported (unreadable file, required column absent, no valid rows)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class TableReport:
    """What happened to one input table."""

    path: str
    rows_read: int = 0
    rows_kept: int = 0
    duplicates: int = 0  # same event twice in the input
    already_present: int = 0  # stored by an earlier import into the same world
    dead_letters: Counter = field(default_factory=Counter)
    sample_rows: dict = field(default_factory=lambda: defaultdict(list))

    def dead_letter(self, reason: str, row: int) -> None:
        self.dead_letters[reason] += 1
        if len(self.sample_rows[reason]) < SAMPLE_ROWS:
            self.sample_rows[reason].append(row)

    def as_dict(self) -> dict:
        return {"path": self.path, "rows_read": self.rows_read, "rows_kept": self.rows_kept,
                "duplicates": self.duplicates, "already_present": self.already_present,
                "dead_lettered": sum(self.dead_letters.values()), "dead_letters": dict(self.dead_letters),
                "sample_rows": dict(self.sample_rows)}


class _DeadLetters:
    """Unusable rows with their source, row number, reason and raw values: appended to a
    JSON Lines file, or kept in `records` when the import writes no world."""

    def __init__(self, path: Path | None):
        self.path = path
        self.records: list[dict] = []
        self._file = path.open("a", encoding="utf-8") if path else None

    def write(self, table: str, frame: pd.DataFrame, rows: np.ndarray, reasons: list[str], report: TableReport,
              first_row: int) -> None:
        picked = frame.iloc[rows]
        raw = picked.astype(object).where(picked.notna(), None).to_dict("records")
        for position, reason, values in zip(rows, reasons, raw, strict=True):
            row = first_row + int(position) + 1  # 1-based: the first data row is row 1
            report.dead_letter(reason.split(":")[0], row)
            record = {"table": table, "row": row, "reason": reason, "raw": values}
            if self._file:
                self._file.write(json.dumps(record, default=str) + "\n")
            else:
                self.records.append(record)

    def close(self) -> None:
        if self._file:
            self._file.close()

    def as_schema_error(self, table: str, n_rows: int) -> SchemaError:
        """The kept records as the SchemaError a strict loader raises (first reason of each row)."""
        errors = []
        for r in self.records:
            head, _, message = r["reason"].split("; ")[0].partition(": ")
            errors.append(FieldError(r["row"], head.split(" ")[-1], message))
        return SchemaError(table, errors, n_rows)


# -- reading ------------------------------------------------------------------------------

def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def read_chunks(source: TableSource, base: Path, on_progress: Progress | None = None, table: str = "",
                chunk_rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """The file's rows, chunk by chunk, as strings (ids keep their leading zeros)."""
    path = _resolve(base, source.path)
    if not path.is_file():
        raise ImportFailed(f"{table or 'table'}: no file at {path}")
    fmt = source.file_format()
    try:
        if fmt == "parquet":
            yield from _parquet_chunks(path, chunk_rows, on_progress, table)
            return
        total = path.stat().st_size
        with path.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
            if fmt == "jsonl":
                reader = pd.read_json(stream, lines=True, chunksize=chunk_rows, dtype=False, encoding=source.encoding)
            else:
                sep = source.sep or ("\t" if fmt == "tsv" else ",")
                reader = pd.read_csv(stream, sep=sep, dtype=str, chunksize=chunk_rows, encoding=source.encoding)
            with reader:
                for chunk in reader:
                    if on_progress:
                        on_progress(table, raw.tell(), total)
                    yield chunk
    except ImportFailed:
        raise
    except (ValueError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise ImportFailed(f"{table or 'table'}: cannot read {path} as {fmt}: {exc}") from None


def _parquet_chunks(path: Path, chunk_rows: int, on_progress: Progress | None, table: str):
    f = pq.ParquetFile(path)
    total, done = f.metadata.num_rows, 0
    for batch in f.iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        done += len(frame)
        if on_progress:
            on_progress(table, done, total)
        yield frame


# -- mapping one chunk onto a schema ------------------------------------------------------------

def _as_text(col: pd.Series) -> pd.Series:
    """Values as strings; whole floats lose their '.0' (a JSON id column with a gap is float)."""
    if pd.api.types.is_float_dtype(col):
        whole = col.notna() & (col == col.round())
        out = col.astype(object).where(~whole, col.where(whole).astype("Int64").astype(object))
        return out.where(col.notna(), None).map(lambda v: None if v is None else str(v))
    if pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col):
        return col.map(lambda v: v if isinstance(v, str) or v is None or v is pd.NA
                       or (isinstance(v, float) and np.isnan(v)) else str(v))
    return col.astype(str).where(col.notna(), None)


def _timestamps(col: pd.Series, unit: str) -> tuple[pd.Series, pd.Series]:
    """(UTC timestamps, mask of values that are numbers but beyond pandas' range, e.g. year 1)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        ts = col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
        return ts, pd.Series(False, index=col.index)
    if unit == "iso":
        ts = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
        beyond = ts.isna() & col.astype("string").str.match(r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}").fillna(False)
        return ts, beyond.astype(bool)
    numbers = pd.to_numeric(col, errors="coerce")
    ts = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    return ts, (ts.isna() & numbers.notna()).astype(bool)


TS_FIELDS = {"ts", "signup_ts", "consent_ts", "created_ts"}
ID_FIELDS = {"event_id", "user_id", "item_id"}


def map_columns(chunk: pd.DataFrame, source: TableSource, table: str) -> pd.DataFrame:
    """The chunk's mapped columns renamed to schema fields, constants and prefixes applied.
    A mapped column absent from the file is an ImportFailed naming the columns found."""
    absent = [raw for raw in source.columns.values() if raw not in chunk.columns]
    if absent:
        raise ImportFailed(f"{table}: column(s) {absent} named in the mapping are not in {source.path} "
                           f"(columns found: {list(chunk.columns)})")
    out = pd.DataFrame(index=chunk.index)
    for name, raw in source.columns.items():
        col = chunk[raw]
        if name in TS_FIELDS:
            parsed, beyond = _timestamps(col, source.ts_unit)
            out[name] = parsed
            out[f"__beyond_{name}"] = beyond.to_numpy()
            out[f"__raw_{name}"] = (col.notna() & parsed.isna()).to_numpy() & ~beyond.to_numpy()
        else:
            out[name] = col if pd.api.types.is_numeric_dtype(col) and name not in ID_FIELDS else _as_text(col)
    for name, value in source.constant.items():
        out[name] = value
    for name, replacements in source.values.items():
        if name in out:
            out[name] = out[name].replace(replacements)
    for name, prefix in source.prefix.items():
        if name in out:
            out[name] = (prefix + out[name].astype("string")).astype(object).where(out[name].notna(), None)
    return out


def _check(frame: pd.DataFrame, model: type[Record], reasons: list[list[str]],
           choices: dict[str, tuple] | None = None) -> pd.DataFrame:
    """Typed rows of `frame`; each bad row gets its reasons appended (field: message)."""
    flags = [c for c in frame.columns if c.startswith("__")]
    for c in flags:
        kind, _, name = c[2:].partition("_")
        for i in np.flatnonzero(frame[c].to_numpy()):
            reasons[i].append(f"unparseable {name}: not a timestamp in the mapping's ts_unit" if kind == "raw"
                              else f"{name} out of range: {name} before 1970 or in the future")
    typed, errors = check_frame(frame.drop(columns=flags), model, choices)
    for e in errors:
        if e.row is not None and not (e.field in TS_FIELDS and reasons[e.row]):
            reasons[e.row].append(f"invalid {e.field}: {e.message}")
    return typed


# -- events -----------------------------------------------------------------------------------

def derive_event_ids(events: pd.DataFrame) -> pd.Series:
    """A stable id per event from its content: the same row imported twice gets the same id."""
    parts = [events[c].astype("string").fillna("") for c in ("user_id", "item_id", "event_type")]
    parts.append(events["ts"].astype("int64").astype("string"))
    for c in ("rating", "dwell_s", "session_id", "request_id"):
        if c in events:
            parts.append(events[c].astype("string").fillna(""))
    keys = parts[0].str.cat(parts[1:], sep="\x1f")
    return pd.Series(["ev-" + hashlib.blake2b(k.encode(), digest_size=16).hexdigest() for k in keys],
                     index=events.index, dtype=object)


def _event_chunk(chunk: pd.DataFrame, mapping: Mapping, now: pd.Timestamp) -> tuple[pd.DataFrame, list[list[str]]]:
    source = mapping.events
    frame = map_columns(chunk, source, "events")
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    if source.event_types:
        raw = frame["event_type"].astype("string")
        renames = source.renames()
        stored = raw.map(renames)
        identity = raw.isin(set(renames.values()) - set(renames))  # already a stored name
        frame["event_type"] = stored.where(stored.notna(), raw.where(identity)).astype(object)
        for i in np.flatnonzero((frame["event_type"].isna() & raw.notna()).to_numpy()):
            reasons[i].append(f"unknown event type: {raw.iloc[i]!r} is not in the mapping's event_types")
    if "dwell_s" not in frame:
        frame["dwell_s"] = np.nan
    frame.loc[(frame["event_type"] == "click") & frame["dwell_s"].isna(), "dwell_s"] = source.dwell_s_default
    if "event_id" not in frame:
        frame["event_id"] = "pending"  # derived after the check, from the typed values
    typed = _check(frame, Event, reasons, {"event_type": source.event_type_weights().known})
    ts = typed["ts"]
    for i in np.flatnonzero(((ts < EARLIEST) | (ts > now + FUTURE_SLACK)).fillna(False).to_numpy()):
        if not reasons[i]:
            reasons[i].append(f"ts out of range: {ts.iloc[i]} is before 1970 or in the future")
    return typed, reasons


def import_events(mapping: Mapping, base: Path, dead: _DeadLetters, on_progress: Progress | None,
                  chunk_rows: int = CHUNK_ROWS, stored_ids: set[str] | None = None) -> tuple[pa.Table, TableReport]:
    """The usable events, each id once, in file order. `stored_ids`: ids a world already holds
    (counted as already present, not stored again)."""
    report = TableReport(mapping.events.path)
    now = pd.Timestamp.now(tz="UTC")
    stored_ids = stored_ids or set()
    seen: set[str] = set()
    kept: list[pa.Table] = []
    first_row = 0
    for chunk in read_chunks(mapping.events, base, on_progress, "events", chunk_rows):
        chunk = chunk.reset_index(drop=True)
        typed, reasons = _event_chunk(chunk, mapping, now)
        bad = np.array([bool(r) for r in reasons], dtype=bool)
        if bad.any():
            dead.write("events", chunk, np.flatnonzero(bad), ["; ".join(reasons[i]) for i in np.flatnonzero(bad)],
                       report, first_row)
        good = typed[~bad]
        if "event_id" not in mapping.events.columns:
            good = good.assign(event_id=derive_event_ids(good))
        ids = good["event_id"].astype(object)
        # set lookups per row: Series.isin(set) would copy the whole set on every chunk
        repeat = ids.duplicated().to_numpy() | _member(ids, seen)  # an earlier row of this import
        present = ~repeat & _member(ids, stored_ids)  # held by the world before
        new = ~repeat & ~present
        report.duplicates += int(repeat.sum())
        report.already_present += int(present.sum())
        seen.update(ids)
        kept.append(pa.Table.from_pandas(good[new], schema=EVENT_ARROW, preserve_index=False))
        report.rows_read += len(chunk)
        first_row += len(chunk)
    events = pa.concat_tables(kept) if kept else EVENT_ARROW.empty_table()
    report.rows_kept = events.num_rows
    return events, report


def _member(ids: pd.Series, known: set[str]) -> np.ndarray:
    return np.fromiter((i in known for i in ids), dtype=bool, count=len(ids))


def first_seen(events: pa.Table, key: str) -> pd.Series:
    """Each user's or item's first event time."""
    firsts = events.group_by(key).aggregate([("ts", "min")]).to_pandas()
    return firsts.set_index(key)["ts_min"].sort_index()


# -- items and users ------------------------------------------------------------------------------

def _read_table(source: TableSource, base: Path, table: str,
                on_progress: Progress | None) -> tuple[pd.DataFrame, pd.DataFrame, TableReport]:
    """A whole (small) table, mapped onto schema fields and as read (for its dead letters)."""
    raw = [c.reset_index(drop=True) for c in read_chunks(source, base, on_progress, table)]
    raw_frame = pd.concat(raw, ignore_index=True) if raw else pd.DataFrame()
    frame = map_columns(raw_frame, source, table)
    report = TableReport(source.path, rows_read=len(frame))
    return frame, raw_frame, report


def _finish_table(frame: pd.DataFrame, raw: pd.DataFrame, model: type[Record], table: str, key: str,
                  dead: _DeadLetters, report: TableReport) -> pd.DataFrame:
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    typed = _check(frame, model, reasons)
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    if bad.any():
        dead.write(table, raw, np.flatnonzero(bad), ["; ".join(reasons[i]) for i in np.flatnonzero(bad)], report, 0)
    typed = typed[~bad]
    before = len(typed)
    typed = typed.drop_duplicates(key, keep="first")
    report.duplicates = before - len(typed)
    report.rows_kept = len(typed)
    return typed.reset_index(drop=True)


def _item_text(source: ItemSource, base: Path, on_progress: Progress | None) -> pd.Series | None:
    if source.extra_text is None:
        return None
    table = source.extra_text.as_table(source.prefix)
    chunks = [map_columns(c, table, "items.extra_text") for c in read_chunks(table, base, on_progress, "item text")]
    text = pd.concat(chunks, ignore_index=True).dropna(subset=["item_id", "text"])
    return text.groupby("item_id", sort=False)["text"].apply(lambda s: " ".join(s.astype(str).unique()))


def import_items(mapping: Mapping, firsts: pd.Series, base: Path, dead: _DeadLetters,
                 on_progress: Progress | None) -> tuple[pd.DataFrame, TableReport | None, int]:
    """The catalog, plus a minimal record for every item seen only in events. Description:
    the mapped one, else title + every category value (+ extra text), so the item tower reads words."""
    fallback_ts = firsts.min() if len(firsts) else pd.Timestamp.now(tz="UTC")
    report, typed = None, pd.DataFrame(columns=list(Item.model_fields))
    source = mapping.items
    if source is not None:
        frame, raw, report = _read_table(source, base, "items", on_progress)
        frame["title"] = frame["title"] if "title" in frame else frame["item_id"]
        categories = frame["category"].astype("string") if "category" in frame \
            else pd.Series("unknown", index=frame.index, dtype="string")
        categories = categories.fillna("unknown").replace("", "unknown")
        if "description" not in frame:
            words = categories.str.replace(source.list_separator, " ", regex=False) if source.list_separator \
                else categories
            text = frame["title"].astype("string").fillna("") + " " + words
            extra = _item_text(source, base, on_progress)
            if extra is not None:
                text = (text + " " + frame["item_id"].map(extra).fillna("")).str.strip()
            frame["description"] = text.astype(object)
        if source.list_separator:
            categories = categories.str.split(source.list_separator, regex=False).str[0]
        frame["category"] = categories.astype(object)
        if "created_ts" not in frame:
            frame["created_ts"] = frame["item_id"].map(firsts).fillna(fallback_ts)
        typed = _finish_table(frame, raw, Item, "items", "item_id", dead, report)
    unseen = sorted(set(firsts.index) - set(typed["item_id"]))
    minimal = pd.DataFrame({"item_id": unseen, "title": unseen, "category": "unknown", "description": "",
                            "created_ts": [firsts[i] for i in unseen]})
    minimal = check_frame(minimal, Item)[0]
    items = minimal if typed.empty else pd.concat([typed, minimal], ignore_index=True) if unseen else typed
    return items, report, len(unseen)


def import_users(mapping: Mapping, firsts: pd.Series, base: Path, dead: _DeadLetters,
                 on_progress: Progress | None) -> tuple[pd.DataFrame, TableReport | None, int]:
    """Profiles, plus a default record for every user seen only in events: signed up at their
    first event, consent per the mapping's policy recorded at that time. A user whose profile
    row was unusable gets consent denied, whatever the policy: their record said something
    the import could not read, so the policy's default must not speak for them."""
    fallback_ts = firsts.min() if len(firsts) else pd.Timestamp.now(tz="UTC")
    granted = mapping.consent.default == "granted"
    report, typed = None, pd.DataFrame(columns=list(User.model_fields))
    unreadable: set = set()
    source: UserSource | None = mapping.users
    if source is not None:
        frame, raw, report = _read_table(source, base, "users", on_progress)
        if "signup_ts" not in frame:
            frame["signup_ts"] = frame["user_id"].map(firsts).fillna(fallback_ts)
        for purpose in ("consent_personalization", "consent_analytics"):
            if purpose not in frame:
                frame[purpose] = granted
            else:
                frame[purpose] = frame[purpose].where(frame[purpose].notna(), granted)
        if "consent_ts" not in frame:
            frame["consent_ts"] = frame["signup_ts"]
        typed = _finish_table(frame, raw, User, "users", "user_id", dead, report)
        unreadable = set(frame["user_id"].dropna()) - set(typed["user_id"])
    unseen = firsts[~firsts.index.isin(set(typed["user_id"]))]
    consent = np.where(unseen.index.isin(unreadable), False, granted)
    defaults = pd.DataFrame({"user_id": unseen.index, "signup_ts": unseen.to_numpy(),
                             "consent_personalization": consent, "consent_analytics": consent,
                             "consent_ts": unseen.to_numpy()})
    defaults = check_frame(defaults, User)[0]
    users = defaults if typed.empty else pd.concat([typed, defaults], ignore_index=True) if len(unseen) else typed
    return users, report, len(unseen)


# -- the whole import ------------------------------------------------------------------------------

@dataclass
class Imported:
    """What an import produced: the tables (events as Arrow, oldest first) and its report."""

    users: pd.DataFrame
    items: pd.DataFrame
    events: pa.Table
    meta: dict
    report: dict

    def world(self) -> World:
        """The tables as a validated in-memory World (pandas)."""
        known = EventTypes.of_world(self.meta).known
        return World(self.users, self.items,
                     validate_frame(self.events.to_pandas(), Event, "events", {"event_type": known}), None, self.meta)


def _add_new(existing: pd.DataFrame, new: pd.DataFrame, key: str) -> pd.DataFrame:
    return pd.concat([existing, new[~new[key].isin(set(existing[key]))]], ignore_index=True)


def import_world(mapping: Mapping, base: Path, out: Path | None = None, on_progress: Progress | None = None,
                 chunk_rows: int = CHUNK_ROWS, strict: bool = False,
                 prepare_users: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Imported:
    """Import the mapped files; with `out`, add to (or create) the world there and write
    `import_report.json` and `dead_letters.jsonl` beside it.

    `strict` (loaders of reference datasets, which must lose nothing) raises SchemaError on an
    unusable row instead of dead-lettering it, and writes nothing. `prepare_users` transforms
    the imported profiles before they are stored (the CLI pseudonymizes PII there)."""
    if strict and out is not None:
        raise ValueError("a strict import keeps its dead letters in memory: give no `out`")
    started = time.perf_counter()
    existing = load_world(out) if out is not None and (out / "events.parquet").exists() else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    dead = _DeadLetters(out / "dead_letters.jsonl" if out is not None else None)
    try:
        stored = set(existing.events["event_id"]) if existing is not None else None
        events, event_report = import_events(mapping, base, dead, on_progress, chunk_rows, stored)
        items, item_report, minimal_items = import_items(mapping, first_seen(events, "item_id"), base, dead,
                                                         on_progress)
        users, user_report, default_users = import_users(mapping, first_seen(events, "user_id"), base, dead,
                                                         on_progress)
    finally:
        dead.close()
    if strict and dead.records:
        raise dead.as_schema_error(dead.records[0]["table"], event_report.rows_read)
    report = {"mapping": mapping.name, "events": event_report.as_dict(),
              "items": item_report.as_dict() if item_report else None,
              "users": user_report.as_dict() if user_report else None,
              "items_from_events_only": minimal_items, "users_from_events_only": default_users,
              "consent_default": mapping.consent.default,
              "dead_letters_file": str(dead.path) if dead.path else None}
    seconds = time.perf_counter() - started
    report["seconds"] = round(seconds, 3)
    report["events_per_s"] = round(event_report.rows_read / seconds) if seconds else None
    if event_report.rows_kept == 0 and event_report.already_present == 0:
        raise ImportFailed(f"no usable events in {mapping.events.path}: {event_report.rows_read:,} rows read, "
                           f"{dict(event_report.dead_letters)} dead-lettered", report)
    if prepare_users is not None:
        users = prepare_users(users)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    meta = {"source": mapping.name or "import", "imported_at": now,
            "event_types": mapping.events.event_type_weights().to_json()}
    if existing is not None:
        stored_events = pa.Table.from_pandas(existing.events, schema=EVENT_ARROW, preserve_index=False)
        events = pa.concat_tables([stored_events, events])
        items, users = _add_new(existing.items, items, "item_id"), _add_new(existing.users, users, "user_id")
        meta = {**existing.meta, "updated_at": now, "event_types": {
            **EventTypes.of_world(existing.meta).to_json(), **meta["event_types"]}}
    imported = Imported(users, items, events.take(pc.sort_indices(events, [("ts", "ascending")])), meta, report)
    if out is not None:  # a stable sort above: the world's events oldest first, file order within a time
        save_tables(out, imported.users, imported.items, imported.events, meta)
        (out / "import_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return imported


def import_from_file(mapping_path: str | Path, out: Path | None = None, base: Path | None = None,
                     on_progress: Progress | None = None,
                     prepare_users: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Imported:
    """`import_world` for a mapping file; paths in it are relative to it unless `base` is given."""
    mapping_path = Path(mapping_path)
    mapping = load_mapping(mapping_path)
    return import_world(mapping, base or mapping_path.resolve().parent, out, on_progress,
                        prepare_users=prepare_users)
