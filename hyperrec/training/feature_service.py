"""The model's Feast FeatureService: every online feature a registered two-stage model reads.

`feature_repo/definitions.py` declares it (`feast apply` registers it with the views) and
`hyperrec.registry.model_registry.register_model` tags each model version with its name
(FEATURE_SERVICE_TAG), so a version says which features it needs, by one Feast name:
`store.get_feature_service(name)`, then `get_online_features(features=service, ...)` or
`get_historical_features(..., features=service)`.

What it holds: the query tower's inputs (`hyperrec.models.two_tower.USER_INPUTS` without
the `user_id` join key: profile, nine activity counts, the request context's hour and
weekday, the recent items), the purchases re-ranking filters out, and what the feedback
stages read (`hyperrec.online.feedback.FEEDBACK_INPUTS`). No TensorFlow here: Feast
imports this module on every apply, so the activity names are restated from two_tower
(tests/test_model_packaging.py holds `user_inputs()` equal to USER_INPUTS).
"""

from __future__ import annotations

from hyperrec.features.views import (
    REQUEST_CONTEXT,
    USER_ACTIVITY,
    USER_PROFILE,
    USER_PURCHASES,
    USER_RECENT_ITEMS,
    USER_RECENT_VIEWS,
)

FEATURE_SERVICE_TAG = "feast_feature_service"  # on a registered model version
# hyperrec.models.two_tower.ACTIVITY (importing it would import TensorFlow)
ACTIVITY = ("views_30m", "clicks_30m", "views_1d", "clicks_1d", "views_7d", "clicks_7d", "purchases_7d",
            "ctr_7d", "mean_dwell_7d")
CONTEXT = ("hour_of_day", "day_of_week")
# hyperrec.online.feedback.FEEDBACK_INPUTS, by view
FEEDBACK = {USER_RECENT_ITEMS.name: ("recent_items_ts",),
            USER_RECENT_VIEWS.name: ("recent_views", "recent_views_ts", "recent_browsed", "recent_browsed_ts")}


def feature_service_name(model_name: str) -> str:
    """The Feast name of a registered model's feature service (one per model)."""
    return model_name.replace("-", "_")


def user_inputs() -> dict[str, str]:
    """hyperrec.models.two_tower.USER_INPUTS (name -> kind, in order), without TensorFlow."""
    return {"user_id": "string", **USER_PROFILE.features, **{f: USER_ACTIVITY.features[f] for f in ACTIVITY},
            **{f: REQUEST_CONTEXT[f] for f in CONTEXT}, "recent_items": USER_RECENT_ITEMS.features["recent_items"]}


def model_features() -> dict[str, tuple[str, ...]]:
    """{view name: the features of it the model and its serving path read}."""
    out = {USER_PROFILE.name: tuple(USER_PROFILE.features),
           USER_ACTIVITY.name: ACTIVITY,
           "request_context": CONTEXT,
           USER_RECENT_ITEMS.name: ("recent_items", *FEEDBACK[USER_RECENT_ITEMS.name]),
           USER_PURCHASES.name: ("purchased_items",),
           USER_RECENT_VIEWS.name: FEEDBACK[USER_RECENT_VIEWS.name]}
    return out


def feature_refs() -> list[str]:
    """The service's features as "view:feature" references."""
    return [f"{view}:{name}" for view, names in model_features().items() for name in names]
