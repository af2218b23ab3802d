"""Response records of the API (msgspec Structs), named for the thing they hold."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from atlas.queries import LayerPair, Orphans
from atlas.queries.records import SAE
from .sqlguard import MAX_SQL_CHARS


class Health(msgspec.Struct):
    ok: bool
    atlas: str
    """The atlas file's name (paths the API shows are relative to the atlas's folder)."""
    saes: int
    schema_version: int
    snapshot: str


class SAEPage(msgspec.Struct):
    items: list[SAE]
    next: str | None


class OrphanPage(Orphans):
    """One page of the orphan list; `next` fetches the following one."""

    next: str | None = None


class LayerPairList(msgspec.Struct):
    items: list[LayerPair]
    min_frac: float
    min_score: float
    method: str


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A vector (d_in numbers), or an SAE id and feature; k hits among `saes` (default: all of that width)."""

    vector: Annotated[list[Annotated[float, msgspec.Meta(ge=-1e30, le=1e30)]], msgspec.Meta(
        min_length=1, max_length=65536)] | None = None
    sae_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    feature: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    saes: Annotated[list[Annotated[str, msgspec.Meta(max_length=512)]], msgspec.Meta(max_length=1000)] | None = None


# What msgspec cannot say: a search names a vector (with a non-zero number: a direction), or an SAE and a
# feature (non-null), not both.
SEARCH_REQUIRES = {"oneOf": [
    {"required": ["vector"], "properties": {
        "vector": {"type": "array", "contains": {"anyOf": [{"exclusiveMinimum": 0}, {"exclusiveMaximum": 0}]}},
        "sae_id": {"type": "null"}, "feature": {"type": "null"}}},
    {"required": ["sae_id", "feature"], "properties": {"sae_id": {"type": "string"}, "feature": {"type": "integer"},
                                                       "vector": {"type": "null"}}},
]}

SQLFormat = Literal["json", "csv", "arrow", "parquet"]


class SQLRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/sql body."""

    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SQL_CHARS)]
    format: SQLFormat = msgspec.field(default="json", name="_format")
    limit: Annotated[int, msgspec.Meta(ge=0)] | None = msgspec.field(default=None, name="_limit")


class SQLResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    limit: int
    elapsed_ms: float
