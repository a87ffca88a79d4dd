"""`python -m serving [--home DIR] [--model_name NAME] [KServe flags]`: one ModelServer process."""

import argparse
import logging
from datetime import datetime

import kserve
from kserve import model_server

import hyperrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before kserve/TF load)
from hyperrec.config import load_settings
from hyperrec.eventlog import EventLog
from hyperrec.privacy import ErasureWatch
from serving.app import install
from serving.recommender import RecommenderModel, ServerConfig

parser = argparse.ArgumentParser(parents=[model_server.parser])
parser.add_argument("--home", default=None, help="hyperrec workspace (default $HYPERREC_HOME or ./var)")
parser.add_argument("--as_of", default=None, type=datetime.fromisoformat,
                    help="ISO time feature freshness is judged at (a simulated world's now); default: wall clock")
parser.add_argument("--max_batch", type=int, default=ServerConfig.max_batch, help="micro-batch size limit")
parser.add_argument("--max_wait_ms", type=float, default=ServerConfig.max_wait_ms,
                    help="longest a request waits for its micro-batch to fill")
parser.add_argument("--max_in_flight", type=int, default=ServerConfig.max_in_flight,
                    help="micro-batches running at once (each in its own thread)")
parser.add_argument("--poll_s", type=float, default=ServerConfig.poll_s, help="champion alias check interval")
parser.add_argument("--request_logs", action="store_true",
                    help="log every request (uvicorn access + KServe timing lines: ~6 lines per request)")
parser.set_defaults(model_name="recommender")

if __name__ == "__main__":
    args, _ = parser.parse_known_args()
    config = ServerConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight,
                          poll_s=args.poll_s)
    model = RecommenderModel(args.model_name, load_settings(args.home), as_of=args.as_of, config=config)
    model.load()
    install(model_server.app, {model.name: model},
            events=EventLog(model.settings.event_log, suppress=ErasureWatch(model.settings)))
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False)  # configures logging
    if not args.request_logs:  # per-request lines cost more than some serving stages
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])
