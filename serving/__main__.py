"""`python -m serving [--home DIR] [--model_name NAME] [KServe flags]`: one ModelServer process."""

import argparse
from datetime import datetime

import kserve
from kserve import model_server

import hyperrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before kserve/TF load)
from hyperrec.config import load_settings
from serving.recommender import RecommenderModel

parser = argparse.ArgumentParser(parents=[model_server.parser])
parser.add_argument("--home", default=None, help="hyperrec workspace (default $HYPERREC_HOME or ./var)")
parser.add_argument("--as_of", default=None, type=datetime.fromisoformat,
                    help="ISO time feature freshness is judged at (a simulated world's now); default: wall clock")
parser.set_defaults(model_name="recommender")

if __name__ == "__main__":
    args, _ = parser.parse_known_args()
    model = RecommenderModel(args.model_name, load_settings(args.home), as_of=args.as_of)
    model.load()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start([model])
