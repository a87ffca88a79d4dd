"""Processes opening one new SQLite file at the same moment (server workers starting
together) all get a WAL connection: SQLite fails the WAL switch at once when another
connection is making it, ignoring the busy timeout, so `connect_wal` retries it."""

import multiprocessing
import sqlite3

from hyperrec.data.eventlog import EventLog
from hyperrec.sqlite_wal import connect_wal

PROCESSES, FILES = 3, 200


def _open_all(folder, barrier, failures) -> None:
    for n in range(FILES):
        barrier.wait()
        try:
            EventLog(folder / f"events-{n}.db").db.close()
        except sqlite3.OperationalError as err:
            failures.put(str(err))


def test_processes_opening_new_files_together_all_get_wal(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, failures = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_open_all, args=(tmp_path, barrier, failures)) for _ in range(PROCESSES)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * PROCESSES
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == []
    modes = {connect_wal(path).execute("PRAGMA journal_mode").fetchone()[0] for path in tmp_path.glob("events-*.db")}
    assert modes == {"wal"}
    assert len(list(tmp_path.glob("events-*.db"))) == FILES
