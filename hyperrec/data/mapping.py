"""The mapping file `hyperrec data import` reads: where a user's tables are and how their
columns, timestamps and event types map onto the platform's schemas.

One YAML file describes the whole dataset; paths in it are relative to the file (or to a
`base` folder given at import time), so a mapping can be shipped apart from the data, as
`examples/movielens-latest.yaml` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hyperrec.data.event_types import EventTypes
from hyperrec.data.schemas import EVENT_TYPES, Event, Item, User

Format = Literal["csv", "tsv", "parquet", "jsonl"]
TsUnit = Literal["s", "ms", "us", "ns", "iso"]
SUFFIX_FORMATS: dict[str, Format] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet",
                                     ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


class MappingError(ValueError):
    """The mapping file itself is wrong (unknown key, unknown field, bad value)."""


class TableSource(BaseModel):
    """One input file and how its columns become a schema's fields."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="the file, relative to the mapping file (or the import's base folder)")
    format: Format | None = Field(None, description="csv | tsv | parquet | jsonl; default: by extension")
    columns: dict[str, str] = Field(default_factory=dict, description="schema field -> column in the file")
    constant: dict[str, Any] = Field(default_factory=dict, description="schema field -> one value for every row")
    prefix: dict[str, str] = Field(default_factory=dict,
                                   description="schema id field -> text put before every value (keeps id spaces apart)")
    values: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="schema field -> {raw value: value} replacements")
    ts_unit: TsUnit = Field("iso", description="how timestamp columns are written: s | ms | us | ns | iso")
    sep: str | None = Field(None, description="field delimiter for csv/tsv (default , or tab)")
    encoding: str = Field("utf-8", description="text encoding of csv/tsv/jsonl files")

    def file_format(self) -> Format:
        if self.format:
            return self.format
        suffixes = [s for s in Path(self.path).suffixes if s != ".gz"]
        fmt = SUFFIX_FORMATS.get(suffixes[-1].lower()) if suffixes else None
        if fmt is None:
            raise MappingError(f"{self.path}: cannot tell the format from the extension; set `format:` "
                               f"to one of csv, tsv, parquet, jsonl")
        return fmt


class DeclaredType(BaseModel):
    """A type of the user's own, kept under its name and counted as positive by `weight`."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(ge=0, le=100, description="how strongly it counts as positive (a click is 1; 0: not at all)")


class EventSource(TableSource):
    """The interaction log."""

    event_types: dict[str, str | DeclaredType] = Field(
        default_factory=dict,
        description="raw event type -> a canonical type, or {weight: w} to keep it as a type of its own; "
                    "empty: the raw values must already be canonical")
    weights: dict[str, float] = Field(default_factory=dict,
                                      description="canonical type -> weight (default: click, cart, purchase, "
                                                  "rating 1; view 0)")
    dwell_s_default: float = Field(0.0, ge=0, description="dwell given to a click that has none")

    @field_validator("event_types")
    @classmethod
    def _canonical_targets(cls, v: dict) -> dict:
        wrong = {raw: to for raw, to in v.items() if isinstance(to, str) and to not in EVENT_TYPES}
        if wrong:
            raise ValueError(f"event_types maps onto unknown types {wrong}; "
                             f"the canonical types are {list(EVENT_TYPES)} (or declare {{weight: w}})")
        return {str(raw): to for raw, to in v.items()}

    @field_validator("weights")
    @classmethod
    def _canonical_weights(cls, v: dict[str, float]) -> dict[str, float]:
        wrong = sorted(set(v) - set(EVENT_TYPES))
        if wrong:
            raise ValueError(f"weights names {wrong}: only canonical types; declare your own under event_types")
        return v

    def renames(self) -> dict[str, str]:
        """raw -> stored type: canonical targets, and declared types under their own name."""
        return {raw: to if isinstance(to, str) else raw for raw, to in self.event_types.items()}

    def event_type_weights(self) -> EventTypes:
        """The types this log declares: its own ones and re-weighted canonical ones."""
        declared = {raw: to.weight for raw, to in self.event_types.items() if isinstance(to, DeclaredType)}
        return EventTypes({**self.weights, **declared})


class TextSource(BaseModel):
    """Free text per item in a file of its own (tags, reviews): joined onto the description."""

    model_config = ConfigDict(extra="forbid")
    path: str
    format: Format | None = None
    columns: dict[str, str] = Field(description="item_id and text -> columns in the file")
    sep: str | None = None
    encoding: str = "utf-8"

    def as_table(self, prefix: dict[str, str]) -> TableSource:
        return TableSource(path=self.path, format=self.format, columns=self.columns, sep=self.sep,
                           encoding=self.encoding, prefix={k: v for k, v in prefix.items() if k == "item_id"})


class ItemSource(TableSource):
    """The catalog. Items only seen in events get a minimal record (title = id, category unknown)."""

    list_separator: str | None = Field(
        None, description="a multi-valued category column ('Action|Comedy'): the first value is the category, "
                          "all of them go into the description")
    extra_text: TextSource | None = Field(None, description="a file of free text per item (e.g. tags)")


class UserSource(TableSource):
    """Profiles. Users only seen in events get defaults (signup at their first event)."""


class ConsentPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: Literal["granted", "denied"] = Field(
        "granted", description="consent for users without a consent record (both purposes)")


class Mapping(BaseModel):
    """The whole dataset: an event log, optionally a catalog and profiles, and a consent policy."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="recorded in the world's meta.json as its source")
    events: EventSource
    items: ItemSource | None = None
    users: UserSource | None = None
    consent: ConsentPolicy = Field(default_factory=ConsentPolicy)

    def check_fields(self) -> None:
        """Every mapped field exists in its schema and every required one is mapped."""
        tables: list[tuple[str, TableSource | None, type]] = [
            ("events", self.events, Event), ("items", self.items, Item), ("users", self.users, User)]
        for name, source, model in tables:
            if source is None:
                continue
            fields = set(model.model_fields)
            named = set(source.columns) | set(source.constant) | set(source.prefix) | set(source.values)
            unknown = named - fields
            if unknown:
                raise MappingError(f"{name}: {sorted(unknown)} are not fields of {model.__name__} "
                                   f"(fields: {sorted(fields)})")
        required = {"user_id", "item_id", "ts", "event_type"}
        missing = required - set(self.events.columns) - set(self.events.constant)
        if missing:
            raise MappingError(f"events: map {sorted(missing)} in `columns:` (or give a `constant:`)")
        for name, source in (("items", self.items), ("users", self.users)):
            key = name[:-1] + "_id"
            if source is not None and key not in source.columns:
                raise MappingError(f"{name}: map {key} in `columns:`")


def load_mapping(path: str | Path) -> Mapping:
    """Read and check a mapping file; MappingError says what is wrong and where."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise MappingError(f"cannot read the mapping {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise MappingError(f"{path}: expected a mapping with an `events:` section")
    try:
        mapping = Mapping.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise MappingError(f"{path}: {problems}") from None
    mapping.check_fields()
    try:
        mapping.events.event_type_weights()
    except ValueError as exc:
        raise MappingError(f"{path}: events.event_types: {exc}") from None
    return mapping
