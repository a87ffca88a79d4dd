"""Settings: typed, checked where they enter, environment read in one function.

Everything a run writes lives under one home directory (`HYPERREC_HOME`, default `./var`):
data, the Feast registry and online store, MLflow's SQLite database and artifacts, and
kfp.local outputs (a cluster's roles may keep those in one artifact store elsewhere:
`HYPERREC_ARTIFACT_ROOT`). Tests point it at a temporary directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FEATURE_REPO = PROJECT_ROOT / "feature_repo"


class Settings(BaseModel):
    """Deployment settings for one workspace (embedded mode by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    home: Path = Field(description="root of everything a run writes")
    tracking_uri: str = Field(description="MLflow tracking URI")
    model_name: str = "hyperrec-retrieval"
    server_port: int = Field(8080, ge=1, le=65535)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = Field("127.0.0.1:6379", description="Feast connection_string (host:port[,db=N])")
    recs_cache: str | None = Field(None, description="Redis (host:port[,db=N]) caching served lists "
                                   "(hyperrec.online.recs_cache); None: no cache")
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers (host:port[,...]): the server "
                                        "produces POST /v1/events to the event topic instead of the SQLite log")
    bandit_redis: str | None = Field(None, description="Redis (host:port[,db=N]) holding the exploration bandit's "
                                     "shared state (hyperrec.online.bandit_redis); None: a SQLite file in home")
    database_url: str | None = Field(None, description="PostgreSQL (postgresql://user@host:port/db) for the state "
                                     "every role shares on a cluster; None: SQLite files under home")
    artifact_root: Path | None = Field(None, description="where pipeline runs keep their outputs and data "
                                       "snapshots (the artifact store every run writes and an erasure walks); "
                                       "None: home/pipeline_runs")

    @property
    def feature_store_yaml(self) -> Path:
        """The Feast config for this mode: feature_store[.postgres][.redis].yaml. With a database_url the
        registry and offline store are in PostgreSQL (.postgres), else files under home; the online
        store is SQLite or Redis (.redis)."""
        parts = ["feature_store", *(["postgres"] if self.database_url else []),
                 *([self.online_store] if self.online_store != "sqlite" else [])]
        return FEATURE_REPO / (".".join(parts) + ".yaml")

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def offline_dir(self) -> Path:
        """Parquet tables behind Feast's file offline store."""
        return self.feast_dir / "offline"

    @property
    def event_log(self) -> Path:
        """The embedded event log (SQLite, WAL): what `POST /v1/events` appends to."""
        return self.home / "events.db"

    @property
    def offline_events_dir(self) -> Path:
        """Events the offline sink wrote from Kafka (hyperrec.data.offline_events): parquet
        files per hour of event time, which a retrain's snapshot of the world includes."""
        return self.data_dir / "events"

    @property
    def impression_log(self) -> Path:
        """What the server showed (SQLite, WAL): monitoring joins it with the event log."""
        return self.home / "impressions.db"

    @property
    def monitoring_dir(self) -> Path:
        """The retrain trigger's decision log and the Evidently workspace (`make ui`)."""
        return self.home / "monitoring"

    @property
    def pipeline_root(self) -> Path:
        """kfp.local's pipeline root: every run's task outputs (training sets, model folders)."""
        return self.artifact_root or self.home / "pipeline_runs"

    @property
    def snapshots_dir(self) -> Path:
        """The data snapshots runs learn from (hyperrec.training.retrain.snapshot_world), beside
        the runs' outputs: one store for everything a run derived from personal data."""
        return self.pipeline_root / "snapshots"

    @property
    def data_roots(self) -> list[Path]:
        """Every folder this workspace writes data files to (what an erasure walks): home, and
        the artifact store when it lives elsewhere."""
        outside = self.artifact_root is not None and not self.artifact_root.is_relative_to(self.home)
        return [self.home, *([self.artifact_root] if outside else [])]

    @property
    def mlflow_dir(self) -> Path:
        return self.home / "mlflow"


def load_settings(home: str | Path | None = None) -> Settings:
    """Read settings from the environment; the only function that does.

    `HYPERREC_HOME` (default `./var`), `MLFLOW_TRACKING_URI` (default: SQLite inside home),
    `HYPERREC_MODEL_NAME`, `HYPERREC_PORT`, `HYPERREC_ONLINE_STORE` (sqlite|redis),
    `HYPERREC_REDIS` (host:port), `HYPERREC_RECS_CACHE` (host:port of the recommendation cache),
    `HYPERREC_KAFKA_BOOTSTRAP` (host:port of Kafka: events go to the topic, not the SQLite log),
    `HYPERREC_DATABASE_URL` (PostgreSQL for the state roles share on a cluster),
    `HYPERREC_BANDIT_REDIS` (host:port[,db=N] of the bandit's shared state, not the SQLite file),
    `HYPERREC_ARTIFACT_ROOT` (the folder pipeline runs keep outputs and snapshots in; default inside home).
    """
    root = Path(home or os.environ.get("HYPERREC_HOME") or Path.cwd() / "var").resolve()
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    values: dict = {"home": root, "tracking_uri": tracking}
    if name := os.environ.get("HYPERREC_MODEL_NAME"):
        values["model_name"] = name
    if port := os.environ.get("HYPERREC_PORT"):
        values["server_port"] = int(port)
    if store := os.environ.get("HYPERREC_ONLINE_STORE"):
        values["online_store"] = store
    if redis_url := os.environ.get("HYPERREC_REDIS"):
        values["redis_url"] = redis_url
    if recs_cache := os.environ.get("HYPERREC_RECS_CACHE"):
        values["recs_cache"] = recs_cache
    if kafka := os.environ.get("HYPERREC_KAFKA_BOOTSTRAP"):
        values["kafka_bootstrap"] = kafka
    if bandit_redis := os.environ.get("HYPERREC_BANDIT_REDIS"):
        values["bandit_redis"] = bandit_redis
    if database := os.environ.get("HYPERREC_DATABASE_URL"):
        values["database_url"] = database
    if artifacts := os.environ.get("HYPERREC_ARTIFACT_ROOT"):
        values["artifact_root"] = Path(artifacts).resolve()
    return Settings(**values)


def export_env(settings: Settings) -> dict[str, str]:
    """Environment for child processes (feast CLI, kfp.local tasks, model server)."""
    env = dict(os.environ)
    env["HYPERREC_HOME"] = str(settings.home)
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["HYPERREC_MODEL_NAME"] = settings.model_name
    env["HYPERREC_ONLINE_STORE"] = settings.online_store
    env["HYPERREC_REDIS"] = settings.redis_url
    optional = {"HYPERREC_RECS_CACHE": settings.recs_cache, "HYPERREC_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "HYPERREC_BANDIT_REDIS": settings.bandit_redis, "HYPERREC_DATABASE_URL": settings.database_url,
                "HYPERREC_ARTIFACT_ROOT": settings.artifact_root and str(settings.artifact_root)}
    for name, value in optional.items():  # unset here: not inherited from this process either
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    return env
