"""What logging a served list costs the request path: the SQLite `ImpressionRecorder` vs the
`KafkaImpressionWriter` (a local tansu broker), and the writer with no broker at all.

`python -m hyperrec.bench.impression_writers [--requests 20000] [--batch 8] [--rate 2000]`

Each writer gets the same micro-batches of served lists at a steady rate while its
background thread does its work (a SQLite transaction every 0.2 s, or producing to the
topic), so the timings include the contention between the two. Reported: the time of
`add()` per micro-batch (median, p99, max), the process CPU per list (the background
thread's work included), and what reached the store.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from hyperrec.data.impressions import ImpressionLog, ImpressionRecorder
from hyperrec.data.kafka_impressions import TOPIC, KafkaImpressionWriter
from hyperrec.online.serving_path import Recommended

FEATURES = {"hour_of_day": 13.0, "n_events_7d": 12.0, "clicks_30m": 1.0, "ctr_7d": 0.08, "days_since_last": 0.3}


def served(i: int, k: int = 10) -> Recommended:
    return Recommended(item_ids=[f"i{i + j:06d}" for j in range(k)], titles=[""] * k,
                       categories=[f"c{j % 7}" for j in range(k)], scores=list(np.linspace(1, 0.1, k)),
                       reasons=[""] * k, policy="personalized", arm="control", model_version=3,
                       query=np.random.default_rng(i).standard_normal(64).astype(np.float32), monitored=FEATURES)


def drive(writer, requests: int, batch: int, rate: float) -> dict:
    lists = [served(i) for i in range(64)]
    times, gap = [], batch / rate
    cpu, wall = time.process_time(), time.perf_counter()
    next_at = wall
    for n in range(0, requests, batch):
        ids = [f"r{n + j}" for j in range(batch)]
        users = [f"u{(n + j) % 5000}" for j in range(batch)]
        recs = [lists[(n + j) % 64] for j in range(batch)]
        t = time.perf_counter()
        writer.add(ids, users, recs, [FEATURES] * batch, [1e9 + n + j for j in range(batch)])
        times.append(time.perf_counter() - t)
        next_at += gap
        if (pause := next_at - time.perf_counter()) > 0:
            time.sleep(pause)
    writer.close()
    cpu = time.process_time() - cpu
    us = np.array(times) * 1e6
    return {"add_us_p50": float(np.percentile(us, 50)), "add_us_p99": float(np.percentile(us, 99)),
            "add_us_max": float(us.max()), "cpu_us_per_list": cpu / requests * 1e6,
            "seconds": time.perf_counter() - wall}


def main() -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    from hyperrec.services import free_port, kafka_broker

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=8, help="lists per add() (one micro-batch)")
    ap.add_argument("--rate", type=float, default=2000.0, help="lists per second")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        log = ImpressionLog(Path(tmp) / "impressions.db")
        results["sqlite recorder"] = drive(ImpressionRecorder(log), args.requests, args.batch, args.rate)
        results["sqlite recorder"]["stored"] = len(log.read())
        log.close()
    with kafka_broker() as bootstrap:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic(TOPIC, 1, 1)])
        admin.close()
        writer = KafkaImpressionWriter(bootstrap)
        results["kafka writer"] = drive(writer, args.requests, args.batch, args.rate)
        results["kafka writer"] |= {"stored": writer.sent, "dropped": sum(writer.dropped.values())}
    writer = KafkaImpressionWriter(f"127.0.0.1:{free_port()}")
    results["kafka writer, no broker"] = drive(writer, args.requests, args.batch, args.rate)
    results["kafka writer, no broker"] |= {"stored": writer.sent, "dropped": sum(writer.dropped.values())}
    print(f"{args.requests} lists, {args.batch} per add(), {args.rate:g} lists/s")
    for name, r in results.items():
        print(f"{name:26s} add() p50 {r['add_us_p50']:6.0f} us  p99 {r['add_us_p99']:6.0f} us  "
              f"max {r['add_us_max']:7.0f} us  CPU {r['cpu_us_per_list']:5.0f} us/list  "
              f"stored {r['stored']}" + (f"  dropped {r['dropped']}" if "dropped" in r else ""))


if __name__ == "__main__":
    main()
