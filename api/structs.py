"""Response records of the API (msgspec Structs), named for the thing they hold."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from atlas.queries import LayerPair, Orphans


class Health(msgspec.Struct):
    ok: bool
    atlas: str
    saes: int
    schema_version: int
    snapshot: str


class SAE(msgspec.Struct):
    sae_id: str
    model: str
    hook: str
    site: str | None
    layer: int
    d_in: int
    d_sae: int
    arch: str
    k: int | None
    seed: int | None
    dataset: str | None
    stack: str
    neuronpedia_id: str | None
    source: str
    sha256: str
    kind: str | None = "sae"
    """sae | transcoder | skip_transcoder (transcoders: site and layer are the output hook's)."""
    release: str | None = None
    variant: str | None = None
    hook_out: str | None = None
    d_out: int | None = None
    l0: float | None = None


class SAEPage(msgspec.Struct):
    items: list[SAE]
    next: str | None


class Stack(msgspec.Struct):
    stack: str
    model: str
    site: str | None
    d_sae: int
    arch: str
    seed: int | None
    dataset: str | None
    n_saes: int
    first_layer: int
    last_layer: int


class SAEDetail(msgspec.Struct):
    sae: SAE
    n_labelled: int
    mean_density: float | None
    pairs: dict[str, int]


class MatchRef(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    score: float
    rank: int
    assigned: bool
    direction: str
    """'out': this feature is sae_a (its top candidates); 'in': this feature is sae_b (candidates
    pointing to it, from score 0.5 up for similarity methods)."""


class FeatureCard(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    label: str | None
    dec_norm: float
    threshold: float | None
    density: float | None
    max_act: float | None
    neuronpedia_url: str | None
    neuronpedia_embed: str | None
    lineage_url: str
    matches: dict[str, list[MatchRef]]
    examples: list[dict[str, Any]]


class OrphanPage(Orphans):
    """One page of the orphan list; `next` fetches the following one."""

    next: str | None = None


class LayerPairList(msgspec.Struct):
    items: list[LayerPair]
    min_frac: float
    min_score: float
    method: str


class Matrix(msgspec.Struct):
    stack: str
    method: str
    stat: str
    layers: list[int]
    values: list[list[float | None]]


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A vector (d_in numbers), or an SAE id and feature; k hits among `saes` (default: all of that width)."""

    vector: Annotated[list[Annotated[float, msgspec.Meta(ge=-1e30, le=1e30)]], msgspec.Meta(
        min_length=1, max_length=65536)] | None = None
    sae_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] | None = None
    feature: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    saes: Annotated[list[Annotated[str, msgspec.Meta(max_length=512)]], msgspec.Meta(max_length=1000)] | None = None


# What msgspec cannot say: a search names a vector, or an SAE and a feature (non-null), not both.
SEARCH_REQUIRES = {"oneOf": [
    {"required": ["vector"], "properties": {"vector": {"type": "array"}, "sae_id": {"type": "null"},
                                            "feature": {"type": "null"}}},
    {"required": ["sae_id", "feature"], "properties": {"sae_id": {"type": "string"}, "feature": {"type": "integer"},
                                                       "vector": {"type": "null"}}},
]}

SQLFormat = Literal["json", "csv", "arrow", "parquet"]


class SQLRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /api/sql body."""

    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    format: SQLFormat = msgspec.field(default="json", name="_format")
    limit: Annotated[int, msgspec.Meta(ge=0)] | None = msgspec.field(default=None, name="_limit")


class SQLResult(msgspec.Struct):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool
    limit: int
    elapsed_ms: float


class LayerFlow(msgspec.Struct):
    layer: int
    sae_id: str
    d_sae: int
    births: int | None
    deaths: int | None


class SiblingGroup(msgspec.Struct):
    model: str
    hook: str
    d_sae: int
    layer: int
    saes: list[str]


class FoundFeature(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    label: str | None


class PairMatch(msgspec.Struct):
    feature_a: int
    feature_b: int
    score: float
    rank: int
