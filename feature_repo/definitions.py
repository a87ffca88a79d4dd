"""Feast objects for hyperrec, generated from the one feature schema in `hyperrec.features`.

`feast -c feature_repo apply` (or `hyperrec features apply`) registers them; the parquet
sources live under $HYPERREC_HOME/feast/offline, written by `hyperrec features build`.
"""

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Float32, Int64, String

from hyperrec.config import load_settings
from hyperrec.features import FEATURE_VIEWS

DTYPES = {"string": String, "float": Float32, "int": Int64}
OFFLINE_DIR = load_settings().offline_dir

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="a pseudonymous user id")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="a catalog item id")
ENTITIES = {"user_id": user, "item_id": item}


def _view(spec) -> FeatureView:
    return FeatureView(
        name=spec.name,
        entities=[ENTITIES[spec.entity]],
        ttl=spec.ttl,
        schema=[Field(name=f, dtype=DTYPES[kind]) for f, kind in spec.features.items()],
        online=spec.online,
        source=FileSource(name=f"{spec.name}_source", path=str(OFFLINE_DIR / f"{spec.name}.parquet"),
                          timestamp_field="event_timestamp"),
    )


user_profile, user_activity, item_metadata = (_view(spec) for spec in FEATURE_VIEWS)
