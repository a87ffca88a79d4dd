"""What the model server pays per micro-batch to ask the consent ledger: `consented()` for a
batch of users, on SQLite (embedded) and on PostgreSQL over loopback (a throwaway server,
hyperrec.services.postgres_server), the same ledger in both. Also one ErasureWatch check.

    python -m hyperrec.bench.consent_lookup [--users 100000] [--batch 32] [--calls 1000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd


def _timed(fn, calls: int) -> dict[str, float]:
    for _ in range(min(50, calls)):  # warm: connections, prepared statements, page cache
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    ms = np.array(samples) * 1000
    return {"median_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def measure(where, users: int, batch: int, calls: int, seed: int = 0) -> dict[str, dict[str, float]]:
    from hyperrec.config import Settings
    from hyperrec.privacy import ConsentLedger, ErasureWatch
    from hyperrec.privacy.db import is_postgres

    rng = np.random.default_rng(seed)
    ids = [f"u{i:07d}" for i in range(users)]
    ledger = ConsentLedger(where)
    ledger.record_profiles(pd.DataFrame({"user_id": ids, "consent_personalization": rng.random(users) < 0.8,
                                         "consent_analytics": rng.random(users) < 0.5,
                                         "consent_ts": datetime(2026, 1, 1, tzinfo=UTC)}))
    withdrawn = rng.choice(users, users // 10, replace=False)  # a tenth changed their mind later
    for i in withdrawn[:2000]:
        ledger.record_consent(ids[i], "personalization", False, datetime(2026, 2, 1, tzinfo=UTC))
    out = {"consented": _timed(lambda: ledger.consented([ids[i] for i in rng.integers(0, users, batch)],
                                                        "personalization"), calls)}
    settings = (Settings(home=Path(tempfile.mkdtemp(prefix="bench-consent-")), tracking_uri="x", database_url=where)
                if is_postgres(where) else Settings(home=Path(where).parent, tracking_uri="x"))
    watch = ErasureWatch(settings)
    out["erasure_watch_check"] = _timed(lambda: "u0000001" in watch, calls)
    watch.close()
    ledger.close()
    return out


def main() -> None:
    from hyperrec.services import create_database, postgres_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = measure(Path(tmp) / "privacy.db", args.users, args.batch, args.calls)
    with postgres_server() as url:
        results["postgresql"] = measure(create_database(url, "bench"), args.users, args.batch, args.calls)
    print(json.dumps({"users": args.users, "batch": args.batch, "calls": args.calls, **results}, indent=1))


if __name__ == "__main__":
    main()
