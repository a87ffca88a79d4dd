"""`python -m serving [--home DIR] [--model_name NAME] [--workers N] [KServe flags]`: one
ModelServer process, or with --workers N a supervisor and N of them on one port
(serving/workers.py). The supervisor is decided on before kserve or TensorFlow is
imported: it needs neither (they cost ~30 s and ~750 MB per process)."""

import argparse
import os
import sys
from datetime import datetime

DEFAULT_HTTP_PORT = 8080  # KServe's (kserve.constants.constants.DEFAULT_HTTP_PORT)
LOOPBACK = "127.0.0.1"
AUTH_MODES = ("auto", "on", "off")


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def worker_args(argv: list[str]) -> argparse.Namespace:
    """The flags that decide between a supervisor and a server process."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker_slot", type=int, default=None)
    parser.add_argument("--http_port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--home", default=None)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--auth", default="auto", choices=AUTH_MODES)
    return parser.parse_known_args(argv)[0]


def server_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from hyperrec.online.serving_path import EXPERIMENTS
    from serving.app import BODY_TIMEOUT_S
    from serving.recommender import TRIAL_DESIGNS, ServerConfig
    from serving.timeouts import HEADER_TIMEOUT_S

    parser = argparse.ArgumentParser(parents=[model_server.parser], conflict_handler="resolve")
    parser.add_argument("--home", default=None, help="hyperrec workspace (default $HYPERREC_HOME or ./var)")
    parser.add_argument("--as_of", default=None, type=datetime.fromisoformat,
                        help="ISO time feature freshness is judged at (a simulated world's now); default: wall clock")
    parser.add_argument("--max_batch", type=int, default=ServerConfig.max_batch, help="micro-batch size limit")
    parser.add_argument("--max_wait_ms", type=float, default=ServerConfig.max_wait_ms,
                        help="longest a request waits for its micro-batch to fill")
    parser.add_argument("--max_in_flight", type=int, default=ServerConfig.max_in_flight,
                        help="micro-batches running at once (each in its own thread)")
    parser.add_argument("--poll_s", type=float, default=ServerConfig.poll_s, help="champion alias check interval")
    parser.add_argument("--canary_share", type=_share, default=ServerConfig.canary_share,
                        help="share of users in the registry's challenger's trial while one is on (0: never)")
    parser.add_argument("--trial", default=ServerConfig.trial, choices=TRIAL_DESIGNS,
                        help="the trial share's lists: both versions interleaved by team draft, or the challenger's")
    parser.add_argument("--model_backend", default=ServerConfig.backend, choices=("numpy", "tf"),
                        help="run the query tower and ranker as numpy forward passes or TensorFlow graphs")
    parser.add_argument("--recs_cache_ttl_s", type=float, default=ServerConfig.recs_cache_ttl_s,
                        help="longest a cached list is served, with HYPERREC_RECS_CACHE=host:port set "
                             "(invalidated sooner when the user's online features change)")
    parser.add_argument("--feedback", default="on", choices=("on", "off"),
                        help="the user's last two days of engaged, found and passed-over items move each query "
                             "and re-score its candidates (hyperrec.online.feedback)")
    parser.add_argument("--experiment", default="rerank", choices=sorted(EXPERIMENTS),
                        help="the re-ranking experiment's arms (hyperrec.online.serving_path.EXPERIMENTS); "
                             "a stream processor must run with the same one")
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to listen on (0.0.0.0: every interface, as in a container)")
    parser.add_argument("--auth", default="auto", choices=AUTH_MODES,
                        help="require API keys or user tokens (serving/auth.py); auto: on unless --host is loopback")
    parser.add_argument("--ingest_wait_s", type=float, default=10.0,
                        help="longest POST /v1/events waits for the event log's write lock (with "
                             "HYPERREC_KAFKA_BOOTSTRAP set: for the broker's acknowledgement) before a 503")
    parser.add_argument("--header_timeout_s", type=float, default=HEADER_TIMEOUT_S,
                        help="longest a connection may take to send a request's headers (then 408, closed)")
    parser.add_argument("--body_timeout_s", type=float, default=BODY_TIMEOUT_S,
                        help="longest a request's body may take to arrive (then 408)")
    parser.add_argument("--request_logs", action="store_true",
                        help="log every request (uvicorn access + KServe timing lines: ~6 lines per request)")
    # replaces KServe's --workers, whose multi-process mode cannot carry our model (serving/workers.py)
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes sharing the port (1: this process serves alone)")
    # set by the supervisor for its workers
    parser.add_argument("--worker_slot", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--status_fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.set_defaults(model_name="recommender")
    return parser


def serve(args: argparse.Namespace) -> None:
    import logging

    import kserve
    from kserve import model_server

    import hyperrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TF loads)
    from hyperrec.config import load_settings
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.world_db import role_event_types
    from hyperrec.privacy import ErasureWatch
    from serving.app import install
    from serving.auth import authenticator_for
    from serving.recommender import RecommenderModel, ServerConfig
    from serving.workers import serve as serve_on_socket

    config = ServerConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight,
                          poll_s=args.poll_s, worker=args.worker_slot, canary_share=args.canary_share,
                          trial=args.trial, backend=args.model_backend, recs_cache_ttl_s=args.recs_cache_ttl_s,
                          feedback=args.feedback == "on")
    from hyperrec.online.serving_path import EXPERIMENTS

    settings = load_settings(args.home)
    authenticator = authenticator_for(args.host, args.auth, settings.home)
    model = RecommenderModel(args.model_name, settings, as_of=args.as_of, config=config,
                             experiment=EXPERIMENTS[args.experiment])
    model.load()
    types = role_event_types(model.settings)
    if model.settings.kafka_bootstrap:  # a cluster: events go to the Kafka topic (hyperrec.data.kafka_log)
        from hyperrec.data.kafka_log import KafkaEventLog, SeenEventIds
        from hyperrec.services import redis_client
        from serving import metrics

        seen_ids = (SeenEventIds(redis_client(model.settings.redis_url, timeout_s=0.5),
                                 on_failure=lambda what: metrics.DEGRADED.labels("event-dedupe").inc())
                    if model.settings.online_store == "redis" else None)  # the servers' shared Redis
        events = KafkaEventLog(model.settings.kafka_bootstrap, suppress=ErasureWatch(model.settings),
                               event_types=types.known, ack_timeout_s=args.ingest_wait_s, seen_ids=seen_ids)
    else:
        events = EventLog(model.settings.event_log, suppress=ErasureWatch(model.settings), event_types=types.known,
                          busy_wait_s=args.ingest_wait_s)
    model.health_checks.append(events.problem)
    install(model_server.app, {model.name: model}, events=events, authenticator=authenticator,
            body_timeout_s=args.body_timeout_s)
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1)  # configures logging
    if not args.request_logs:  # per-request lines cost more than some serving stages
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    serve_on_socket(server, model, args)  # ModelServer.start's REST server, on our socket (serving/workers.py)


def _metrics_mode() -> None:
    """prometheus_client picks one- or multi-process mode when first imported, from
    PROMETHEUS_MULTIPROC_DIR. Feast sets that variable (to a temp dir of its own) in any
    process that imports feast.metrics, and children inherit it: a server started from such
    a process would report every process's samples in that dir. Only the dir our supervisor
    gives its workers (HYPERREC_METRICS_DIR) counts."""
    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        os.environ.pop(name, None)
    if folder := os.environ.get("HYPERREC_METRICS_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def _one_blas_thread() -> None:
    """Small matrix products per micro-batch (the numpy forward passes, exact search) gain
    nothing from BLAS threads, and under load those threads spin against the other
    batches and worker processes: measured, a 64-row query tower took 11.8 ms with
    OpenBLAS's default threads on a busy 2-core machine and 1.2 ms with one. Set before
    numpy is imported; an explicit setting wins."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")


if __name__ == "__main__":
    _metrics_mode()
    _one_blas_thread()
    early = worker_args(sys.argv[1:])
    if early.workers > 1 and early.worker_slot is None and not {"-h", "--help"} & set(sys.argv):
        from serving.workers import supervise

        sys.exit(supervise(early, sys.argv[1:]))
    import hyperrec  # noqa: F401  (before kserve: it imports TF-dependent modules)

    serve(server_parser().parse_known_args()[0])
