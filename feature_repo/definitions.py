"""Feast objects for hyperrec, generated from the one feature schema in `hyperrec.features.views`.

`feast -c feature_repo apply` (or `hyperrec features build`) registers them. Batch sources
are parquet under $HYPERREC_HOME/feast/offline, or with HYPERREC_DATABASE_URL PostgreSQL tables
(`batch_source`; both written by `hyperrec features build`);
streamed views also take pushes (`<view>_push`) from the stream processor.
"""

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, RequestSource, ValueType
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Int64, String

from hyperrec.config import load_settings
from hyperrec.features.views import FEATURE_VIEWS, REQUEST_CONTEXT, REQUEST_TS
from hyperrec.training.feature_service import feature_service_name, model_features

DTYPES = {"string": String, "float": Float32, "int": Int64, "string_list": Array(String), "int_list": Array(Int64)}
SETTINGS = load_settings()
OFFLINE_DIR = SETTINGS.offline_dir

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="a pseudonymous user id")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="a catalog item id")
ENTITIES = {"user_id": user, "item_id": item}


def batch_source(spec):
    """The view's offline table: a PostgreSQL table when the settings name a database (the
    cluster's Feast, hyperrec.features.postgres), else a parquet file under the workspace."""
    if SETTINGS.database_url:
        from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource

        from hyperrec.features.postgres import table

        return PostgreSQLSource(name=f"{spec.name}_source", table=table(spec.name), timestamp_field="event_timestamp")
    return FileSource(name=f"{spec.name}_source", path=str(OFFLINE_DIR / f"{spec.name}.parquet"),
                      timestamp_field="event_timestamp")


def _view(spec) -> FeatureView:
    source = batch_source(spec)
    if spec.push:
        source = PushSource(name=f"{spec.name}_push", batch_source=source)
    return FeatureView(
        name=spec.name,
        entities=[ENTITIES[spec.entity]],
        ttl=spec.ttl,
        schema=[Field(name=f, dtype=DTYPES[kind]) for f, kind in spec.features.items()],
        online=True,
        source=source,
    )


user_profile, user_activity, user_recent_items, item_metadata, item_popularity, user_purchases, user_recent_views = (
    _view(spec) for spec in FEATURE_VIEWS)

request = RequestSource(name="request", schema=[Field(name=REQUEST_TS, dtype=Int64)])


@on_demand_feature_view(
    sources=[request, user_activity[["last_event_ts"]]],
    schema=[Field(name=f, dtype=DTYPES[kind]) for f, kind in REQUEST_CONTEXT.items()],
    mode="pandas",
)
def request_context(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast stores this body's source and runs it elsewhere: import inside, call the tested function
    from hyperrec.features.views import request_context_features

    return request_context_features(inputs)


# the registered model's features (its versions are tagged with this name)
_VIEWS = {v.name: v for v in (user_profile, user_activity, user_recent_items, user_purchases, user_recent_views,
                              request_context)}
model_service = FeatureService(
    name=feature_service_name(SETTINGS.model_name),
    features=[_VIEWS[view][list(names)] for view, names in model_features().items()],
    description=f"every online feature model {SETTINGS.model_name} and its serving path read",
)
