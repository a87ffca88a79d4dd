"""The naive baseline the serving bench compares against, measured in the same run: what a
KServe server looks like without this project's serving design. Each request, on the
event loop: one Feast online lookup for its users, then one TFRS BruteForce SavedModel call
(query tower + exact top-k over the same catalog). Retrieval only, no ranking, no
batching across requests.

`python -m serving.naive --model_dir DIR --home HOME --http_port N`
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from pathlib import Path

import hyperrec  # noqa: F401  (TF_USE_LEGACY_KERAS before TF loads)


def build_bruteforce(model_dir: Path, out: Path, k: int = 100) -> Path:
    """A SavedModel: user-tower inputs in, top-k (scores, item ids) out."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_recommenders as tfrs

    user_tower = tf.keras.models.load_model(model_dir / "user_tower", compile=False)
    with np.load(model_dir / "candidates.npz") as z:
        ids, emb = z["item_ids"].astype(str), z["embeddings"].astype(np.float32)
    index = tfrs.layers.factorized_top_k.BruteForce(user_tower, k=k)
    index.index(tf.constant(emb), tf.constant(ids))
    from hyperrec.models.two_tower import USER_INPUTS, input_signature

    sig = input_signature(USER_INPUTS)
    serve = tf.function(lambda inputs: index(inputs), input_signature=[sig])
    tf.saved_model.save(index, str(out), signatures={"serving_default": serve.get_concrete_function()})
    return out


def main():
    import kserve
    from kserve import model_server

    from hyperrec.config import load_settings
    from hyperrec.features.store import online_user_features, open_store
    from hyperrec.models.two_tower import USER_INPUTS, tensors
    from serving.protocol import parse_v1

    parser = argparse.ArgumentParser(parents=[model_server.parser])
    parser.add_argument("--model_dir", required=True, type=Path)
    parser.add_argument("--home", default=None)
    parser.add_argument("--as_of", default=None, type=datetime.fromisoformat)
    parser.set_defaults(model_name="recommender")
    args, _ = parser.parse_known_args()

    class NaiveRetrieval(kserve.Model):
        def load(self):
            import tensorflow as tf

            path = args.model_dir.parent / (args.model_dir.name + "-bruteforce")
            if not path.exists():
                build_bruteforce(args.model_dir, path)
            self.serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            self.store = open_store(load_settings(args.home))
            self.ready = True
            return True

        async def predict(self, payload, headers=None, response_headers=None):
            import tensorflow as tf

            requests = parse_v1(payload)
            users = [r.user_id or "" for r in requests]
            features = online_user_features(self.store, users, now=args.as_of)
            out = self.serve(**{c: tf.constant(v) for c, v in tensors(features, USER_INPUTS).items()})
            scores, ids = out["output_0"].numpy(), out["output_1"].numpy()
            return {"predictions": [
                {"user_id": u, "items": [{"item_id": i.decode(), "score": float(s)}
                                         for i, s in zip(ids[n][:r.k], scores[n][:r.k])]}
                for n, (u, r) in enumerate(zip(users, requests))]}

    model = NaiveRetrieval(args.model_name)
    model.load()
    server = kserve.ModelServer(http_port=args.http_port, enable_grpc=False)
    for name in ("uvicorn.access", "kserve.trace"):  # as the hyperrec server: no per-request log lines
        logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
