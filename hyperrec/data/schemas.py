"""The one definition of the event, user and item schemas.

Single records (ingestion, serving) are checked by the pydantic models themselves. Whole
tables (generator output, loaders, training data) are checked by `validate_frame`, which
reads the same models' fields and constraints and checks every column at once, so a
million-row table is validated in well under a second and every bad row is named.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import annotated_types
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

EventType = Literal["view", "click", "add_to_cart", "purchase", "rating"]
EVENT_TYPES: tuple[str, ...] = typing.get_args(EventType)  # canonical; a workspace may declare more
TypeName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$", description=(
    "view, click, add_to_cart, purchase, rating, or a type the workspace declares (hyperrec.data.event_types)"))]
AgeBand = Literal["18-24", "25-34", "35-44", "45-54", "55-64", "65+", "unknown"]
AGE_BANDS: tuple[str, ...] = typing.get_args(AgeBand)

Id = Annotated[str, Field(min_length=1, max_length=128)]
# the earliest event time taken anywhere: older is a unit mistake or a probe, and pandas'
# nanosecond timestamps cannot hold year 1 (a stored one stopped the stream on every read)
EARLIEST_TS = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Record(BaseModel):
    """Base for the schemas: unknown fields are an error, not silently kept."""

    model_config = ConfigDict(extra="forbid")
    # event_type value -> field that must be present for it (checked per record and per frame)
    required_when: ClassVar[dict[str, str]] = {}
    kind_field: ClassVar[str | None] = None
    # field -> allowed values for a str field whose set is configuration (override per call)
    choice_fields: ClassVar[dict[str, tuple[str, ...]]] = {}

    @model_validator(mode="after")
    def _conditional_fields(self):
        kind = getattr(self, self.kind_field) if self.kind_field else None
        needed = self.required_when.get(kind) if kind else None
        if needed and getattr(self, needed) is None:
            raise ValueError(f"{needed} is required when {self.kind_field}={kind}")
        return self


class Event(Record):
    """One interaction: a view (impression), click (with dwell), cart, purchase or rating."""

    event_id: Id
    user_id: Id
    item_id: Id
    event_type: TypeName
    ts: dt.datetime
    dwell_s: Annotated[float, Field(ge=0, le=86400)] | None = None
    rating: Annotated[float, Field(ge=0.5, le=5.0)] | None = None
    session_id: str | None = None
    device: str | None = None
    request_id: str | None = None  # the served list the interaction came from (outcome attribution)

    required_when: ClassVar[dict[str, str]] = {"click": "dwell_s", "rating": "rating"}
    kind_field: ClassVar[str | None] = "event_type"
    choice_fields: ClassVar[dict[str, tuple[str, ...]]] = {"event_type": EVENT_TYPES}

    @field_validator("event_type")
    @classmethod
    def _known_type(cls, value: str, info: ValidationInfo) -> str:
        """Canonical types, or those in `context={"event_types": ...}` (the workspace's)."""
        known = (info.context or {}).get("event_types", EVENT_TYPES)
        if value not in known:
            raise ValueError(f"{value!r} is not one of {list(known)}")
        return value


class User(Record):
    """A CRM profile with per-purpose consent (recorded with its time)."""

    user_id: Id
    email: str | None = None
    name: str | None = None
    age_band: AgeBand = "unknown"
    region: str = "unknown"
    signup_ts: dt.datetime
    consent_personalization: bool
    consent_analytics: bool
    consent_ts: dt.datetime


class Item(Record):
    """A catalog item; `description` is free text the item tower reads."""

    item_id: Id
    title: str
    category: str
    brand: str | None = None
    price: Annotated[float, Field(ge=0)] | None = None
    description: str = ""
    created_ts: dt.datetime


@dataclass(frozen=True)
class FieldError:
    row: int | None  # positional row number, None for a whole-column problem
    field: str
    message: str

    def __str__(self) -> str:
        where = "column" if self.row is None else f"row {self.row}"
        return f"{where}, field '{self.field}': {self.message}"


class SchemaError(ValueError):
    """A table failed validation; `errors` names every bad row and field."""

    def __init__(self, table: str, errors: list[FieldError], n_rows: int):
        self.table, self.errors, self.n_rows = table, errors, n_rows
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        bad_rows = len({e.row for e in errors})
        super().__init__(
            f"{table}: {len(errors)} error(s) in {bad_rows} of {n_rows} rows\n  {shown}{more}"
        )


@dataclass(frozen=True)
class _Spec:
    """What `validate_frame` needs to know about one field, read off the pydantic model."""

    name: str
    base: type
    required: bool
    choices: tuple | None
    ge: float | None
    le: float | None
    min_length: int | None
    default: object


def _field_specs(model: type[BaseModel], choices: dict[str, tuple] | None = None) -> list[_Spec]:
    choices = {**getattr(model, "choice_fields", {}), **(choices or {})}
    specs = []
    for name, info in model.model_fields.items():
        ann, optional = info.annotation, False
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            optional, ann = True, args[0]
        metadata = list(info.metadata)
        if typing.get_origin(ann) is Annotated:
            ann, *extra = typing.get_args(ann)
            for m in extra:
                metadata.extend(getattr(m, "metadata", [m]))
        allowed = typing.get_args(ann) if typing.get_origin(ann) is Literal else choices.get(name)
        base = str if allowed else ann
        ge = next((m.ge for m in metadata if isinstance(m, annotated_types.Ge)), None)
        le = next((m.le for m in metadata if isinstance(m, annotated_types.Le)), None)
        min_len = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
        required = info.is_required() and not optional
        specs.append(_Spec(name, base, required, tuple(allowed) if allowed else None, ge, le, min_len,
                           info.default))
    return specs


_BOOL_WORDS = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}


def _row_errors(mask: np.ndarray, field: str, message: str) -> list[FieldError]:
    return [FieldError(int(i), field, message) for i in np.flatnonzero(mask)]


def _check_column(col: pd.Series, spec: _Spec) -> tuple[pd.Series, list[FieldError]]:
    """Coerce one column to its schema type; return it with the errors found."""
    errors: list[FieldError] = []
    null = col.isna().to_numpy()
    if spec.required:
        errors += _row_errors(null, spec.name, "missing value")
    if spec.base is dt.datetime:
        out = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    elif spec.base in (float, int):
        out = pd.to_numeric(col, errors="coerce")
    elif spec.base is bool:
        out = col.map(lambda v: _BOOL_WORDS.get(str(v).strip().lower()))
    else:
        out = col.astype("string")
    bad_type = out.isna().to_numpy() & ~null
    errors += _row_errors(bad_type, spec.name, f"not a valid {spec.base.__name__}: {{}}")
    errors = [
        FieldError(e.row, e.field, e.message.format(repr(col.iloc[e.row]))) for e in errors
    ]
    if spec.choices:
        bad = ~out.isin(spec.choices).to_numpy() & ~null
        errors += [
            FieldError(int(i), spec.name, f"{col.iloc[i]!r} not one of {list(spec.choices)}")
            for i in np.flatnonzero(bad)
        ]
    if spec.min_length:
        short = (out.str.len() < spec.min_length).fillna(False).to_numpy()
        errors += _row_errors(short, spec.name, "empty")
    if spec.ge is not None:
        errors += _row_errors((out < spec.ge).fillna(False).to_numpy(), spec.name, f"< {spec.ge}")
    if spec.le is not None:
        errors += _row_errors((out > spec.le).fillna(False).to_numpy(), spec.name, f"> {spec.le}")
    return out, errors


def check_frame(df: pd.DataFrame, model: type[Record],
                choices: dict[str, tuple] | None = None) -> tuple[pd.DataFrame, list[FieldError]]:
    """Check and coerce a whole table against `model`; return (typed frame, errors).

    Callers that can quarantine bad rows (ingestion) use the errors; callers that must not
    lose anything (generator, loaders) use `validate_frame`, which raises. `choices`
    overrides a configurable field's allowed values (a workspace's event types).
    """
    df = df.reset_index(drop=True)
    specs = _field_specs(model, choices)
    known = {s.name for s in specs}
    errors = [FieldError(None, c, "unknown column") for c in df.columns if c not in known]
    out = {}
    for spec in specs:
        if spec.name not in df.columns and spec.required:
            errors.append(FieldError(None, spec.name, "missing column"))
            continue
        # an absent optional column comes back filled with its default, in the right type
        default = None if spec.required else spec.default
        col = df[spec.name] if spec.name in df.columns else pd.Series([default] * len(df), dtype=object)
        out[spec.name], col_errors = _check_column(col, spec)
        errors += col_errors
    typed = pd.DataFrame(out, index=df.index)
    if model.kind_field and model.kind_field in typed:
        for kind, needed in model.required_when.items():
            present = typed[needed].notna() if needed in typed else False
            mask = ((typed[model.kind_field] == kind) & ~present).fillna(False).to_numpy(dtype=bool)
            errors += _row_errors(mask, needed, f"required when {model.kind_field}={kind}")
    errors.sort(key=lambda e: (-1 if e.row is None else e.row, e.field))
    return typed, errors


def validate_frame(df: pd.DataFrame, model: type[Record], table: str | None = None,
                   choices: dict[str, tuple] | None = None) -> pd.DataFrame:
    """Return `df` coerced to the schema, or raise SchemaError naming every bad row and field."""
    typed, errors = check_frame(df, model, choices)
    if errors:
        raise SchemaError(table or model.__name__, errors, len(df))
    return typed
