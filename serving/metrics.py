"""Prometheus metrics of the recommendation server (exported on KServe's /metrics, next to
its own per-step histograms).

Under `--workers N` the supervisor sets HYPERREC_METRICS_DIR for its workers (each maps it
to PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported): every
process writes its samples to files there and whichever worker answers /metrics reports
all of them (counters and histograms summed; gauges per live process, a `pid` label).
A gauge read from a function (`track`) is then sampled into its file every 0.25 s, since
the worker that answers cannot call another process's function."""

import os
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS = bool(os.environ.get("HYPERREC_METRICS_DIR"))  # set by the supervisor (see serving/__main__.py)

STAGE_SECONDS = Histogram(
    "hyperrec_stage_seconds", "seconds per batch spent in each serving stage", ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
BATCH_SIZE = Histogram("hyperrec_batch_size", "requests per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
REQUESTS = Counter("hyperrec_recommendations_total", "recommendation lists served", ["policy", "arm"])
ERRORS = Counter("hyperrec_errors_total", "failed requests", ["kind"])  # bad_request | internal
MODEL_VERSION = Gauge("hyperrec_model_version", "registered model version being served",
                      multiprocess_mode="liveall")
CANARY_VERSION = Gauge("hyperrec_canary_version", "challenger version served to the canary share (0: none)",
                       multiprocess_mode="liveall")
SWAPS = Counter("hyperrec_model_swaps_total", "model versions swapped in")
CACHE = Counter("hyperrec_recs_cache_total", "cacheable requests by cache outcome (HYPERREC_RECS_CACHE)",
                ["outcome"])  # hit | miss | fenced (invalidated while computed, not stored) | error
DEGRADED = Counter("hyperrec_degraded_total", "responses made without a part, by part (online-features, "
                   "recs-cache, event-dedupe)", ["part"])
LOAD_FAILURES = Counter("hyperrec_model_load_failures_total", "model versions that failed to load")
FEEDBACK = Counter("hyperrec_bandit_feedback_total", "exploration feedback received", ["outcome"])
EVENTS = Counter("hyperrec_events_total", "events received on POST /v1/events, by outcome",
                 ["outcome"])  # stored | duplicates | dead_lettered | suppressed
IMPRESSIONS_DROPPED = Counter("hyperrec_impressions_dropped_total", "served lists not sent to the impression topic "
                              "(HYPERREC_KAFKA_BOOTSTRAP), by reason", ["reason"])  # buffer_full | broker
BANDIT_UPDATES = Gauge("hyperrec_bandit_updates", "credits in the exploration bandit this process chooses with "
                       "(the shared store's count once this process has caught up with it)",
                       multiprocess_mode="liveall")

_TRACKED: dict[Gauge, Callable[[], float]] = {}


def track(gauge: Gauge, read: Callable[[], float], every_s: float = 0.25) -> None:
    """The gauge reports `read()`: at scrape time in one process, sampled every `every_s`
    under workers."""
    if not MULTIPROCESS:
        gauge.set_function(read)
        return
    first = not _TRACKED
    _TRACKED[gauge] = read
    if first:
        def sample():
            while True:
                for tracked, fn in list(_TRACKED.items()):
                    tracked.set(fn())
                time.sleep(every_s)

        threading.Thread(target=sample, name="metrics-sampler", daemon=True).start()


def scrape(accept: str | None) -> tuple[bytes, str]:
    """Every worker's samples, for the /metrics route under workers."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(accept)
    return encoder(registry), content_type
