"""The container image every component runs in on a cluster (built from the repo's
Dockerfile with the locked dependency set; kfp.local runs them in the current venv)."""

BASE_IMAGE = "hyperrec/platform:0.1.0"
