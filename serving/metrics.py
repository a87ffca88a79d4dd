"""Prometheus metrics of the recommendation server (exported on KServe's /metrics, next to
its own per-step histograms)."""

from prometheus_client import Counter, Gauge, Histogram

STAGE_SECONDS = Histogram(
    "hyperrec_stage_seconds", "seconds per batch spent in each serving stage", ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0))
BATCH_SIZE = Histogram("hyperrec_batch_size", "requests per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
REQUESTS = Counter("hyperrec_recommendations_total", "recommendation lists served", ["policy", "arm"])
ERRORS = Counter("hyperrec_errors_total", "failed requests", ["kind"])  # bad_request | internal
MODEL_VERSION = Gauge("hyperrec_model_version", "registered model version being served")
CANARY_VERSION = Gauge("hyperrec_canary_version", "challenger version served to the canary share (0: none)")
SWAPS = Counter("hyperrec_model_swaps_total", "model versions swapped in")
LOAD_FAILURES = Counter("hyperrec_model_load_failures_total", "model versions that failed to load")
FEEDBACK = Counter("hyperrec_bandit_feedback_total", "exploration feedback received", ["outcome"])
EVENTS = Counter("hyperrec_events_total", "events received on POST /v1/events, by outcome",
                 ["outcome"])  # stored | duplicates | dead_lettered | suppressed
BANDIT_UPDATES = Gauge("hyperrec_bandit_updates", "credits in the exploration bandit this process chooses with "
                       "(the shared store's count once this process has caught up with it)")
