"""The servers the project starts for itself: a real PostgreSQL cluster, started and stopped."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from hyperrec.services import create_database, postgres_server


def test_postgres_server_serves_a_database_and_leaves_nothing_behind():
    with postgres_server() as url:
        assert url.endswith("/hyperrec")
        with psycopg.connect(url) as conn:
            folder = Path(conn.execute("SHOW data_directory").fetchone()[0])
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1), (2)")
            assert conn.execute("SELECT sum(x) FROM t").fetchone() == (3,)
        other = create_database(url, "mlflow")
        assert other.endswith("/mlflow") and create_database(url, "mlflow") == other  # idempotent
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("mlflow",)
    assert not folder.exists()  # the throwaway cluster is gone
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
