"""`python -m serving [--home DIR] [--model_name NAME] [KServe flags]`: one ModelServer process."""

import argparse

import hyperrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before kserve/TF load)
import kserve
from kserve import model_server

from hyperrec.config import load_settings
from serving.recommender import RecommenderModel

parser = argparse.ArgumentParser(parents=[model_server.parser])
parser.add_argument("--home", default=None, help="hyperrec workspace (default $HYPERREC_HOME or ./var)")
parser.set_defaults(model_name="recommender")

if __name__ == "__main__":
    args, _ = parser.parse_known_args()
    model = RecommenderModel(args.model_name or "recommender", load_settings(args.home))
    model.load()
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False).start([model])
