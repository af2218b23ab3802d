"""Typed, ranged request parameters shared by the controllers (their ranges appear in the OpenAPI document)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec
from litestar.openapi.spec import OpenAPIFormat, OpenAPIMediaType, OpenAPIType, Operation, Schema
from litestar.params import PathParameter, QueryParameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from litestar.di import NamedDependency, Provide

from atlas.methods import DEFAULT, METHODS, NAMES, SIMILARITY_METHODS, Threshold
from atlas.queries.pairs import STATS

MethodName = Literal[NAMES]  # type: ignore[valid-type]
SimilarityName = Literal[SIMILARITY_METHODS]  # type: ignore[valid-type]
StatName = Literal[STATS]  # type: ignore[valid-type]
Stat = Annotated[StatName, QueryParameter(description="Pair statistic of each cell.")]

SaeId = Annotated[str, PathParameter(min_length=1, max_length=512, description="An SAE id (GET /api/saes).")]
StackName = Annotated[str, PathParameter(min_length=1, max_length=512, description="A stack (GET /api/stacks).")]
FeatureIndex = Annotated[int, PathParameter(ge=0, le=2**31 - 1, description="Feature index within the SAE.")]
Method = Annotated[MethodName, QueryParameter(description="Matching method: " + "; ".join(
    f"{n} ({m.description}, {'higher' if m.higher_is_better else 'lower'} is better)" for n, m in METHODS.items()))]
Tau = Annotated[float | None, QueryParameter(ge=-1.0, le=1e6, description=(
    "Score bar: at least tau for similarities (scores -1 to 1), at most for distances (MSE: scores >= 0); checked "
    "against the method's range [default: the method's: " + ", ".join(
        f"{n} {m.tau if m.tau is not None else f'quantile {m.quantile}'}" for n, m in METHODS.items()) + "]."))]
Quantile = Annotated[float | None, QueryParameter(
    ge=0.0, le=1.0, schema_extra={"minimum": 0.0},  # Litestar drops a falsy bound of an Optional
    description="Per-pair bar instead of tau (give one of them): keep the best q of each layer pair's assigned scores.")]
SimilarityMethod = Annotated[SimilarityName, QueryParameter(description="Similarity method (higher is better): " + ", ".join(
    SIMILARITY_METHODS))]
SimilarityTau = Annotated[float | None, QueryParameter(ge=-1.0, le=1.0, description=(
    "Score bar (cosine or correlation) [default: the method's: " + ", ".join(
        f"{n} {METHODS[n].tau}" for n in SIMILARITY_METHODS) + "]."))]
SharingTau = Annotated[float | None, QueryParameter(
    ge=-1.0, le=1.0, description="Cosine bar of the sharing rule: decoder and encoder assignments agree, both cosines at least tau "
                "[default: 0.7].")]
Fraction = Annotated[float, QueryParameter(ge=0.0, le=1.0)]
Score = Annotated[float, QueryParameter(ge=-1.0, le=1.0, description="Score bar of a similarity method.")]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Most items returned.")]
Cursor = Annotated[str | None, QueryParameter(pattern=r"^[0-9]{1,9}$", description="The `next` value of the previous page.")]
Name = Annotated[str | None, QueryParameter(min_length=1, max_length=512)]


def _threshold(method: Method = DEFAULT, tau: Tau = None, quantile: Quantile = None) -> Threshold:
    return Threshold.of(method, tau, quantile)


def _similarity_threshold(method: SimilarityMethod = DEFAULT, tau: SimilarityTau = None) -> Threshold:
    return Threshold.of(method, tau, per_pair=False)


THRESHOLD = {"threshold": Provide(_threshold, sync_to_thread=False)}
"""The score bar of a route, from ?method=, ?tau= or ?quantile= (the method's default where neither), checked once by
Threshold.of: a tau outside the method's range, or tau and quantile together, is a 400 (no one parameter's schema can
say so: tests/test_schemathesis.py)."""
SIMILARITY_THRESHOLD = {"threshold": Provide(_similarity_threshold, sync_to_thread=False)}
"""The same for routes whose bar is a tau on a similarity method (?method=, ?tau=): every schema-valid pair passes."""
ThresholdDep = NamedDependency[Threshold]
"""A handler's `threshold`, from THRESHOLD or SIMILARITY_THRESHOLD."""


def page_offset(token: str | None) -> int:
    """Where a page starts: its token is the `next` of the previous page, a plain offset (so any valid token is valid)."""
    return int(token) if token else 0


class StrictBodySchema(OpenAPISchemaPlugin):
    """OpenAPI schemas of request bodies from msgspec's own JSON Schema of the Struct: unlike Litestar's
    generated one it keeps every bound (of list items, of Optional fields, zero) and says
    additionalProperties: false for Structs that forbid unknown fields, so the document says what is checked."""

    def __init__(self, *structs: type, extra: dict[type, dict] | None = None):
        self.structs, self.extra = structs, extra or {}

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return not field_definition.is_union and field_definition.annotation in self.structs

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator) -> Schema:
        name = field_definition.annotation.__name__
        doc = msgspec.json.schema(field_definition.annotation)["$defs"][name]
        return _schema({**doc, **self.extra.get(field_definition.annotation, {})})


def _schema(doc: dict) -> Schema:
    kwargs = {}
    for key, value in doc.items():
        name = "ref" if key == "$ref" else re.sub("([A-Z])", r"_\1", key).lower()  # JSON Schema's camelCase
        if key in ("items", "additionalProperties") and isinstance(value, dict):
            value = _schema(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            value = [_schema(v) for v in value]
        elif key == "properties":
            value = {k: _schema(v) for k, v in value.items()}
        elif key == "type":
            value = OpenAPIType(value)
        kwargs[name] = value
    return Schema(**kwargs)


def also_answers(*media_types: str) -> type[Operation]:
    """An operation class whose 200 also lists `media_types` (binary bodies: a safetensors file, CSV, Arrow,
    Parquet), so the document names every Content-Type the route sends (Litestar lists only the declared one)."""

    @dataclass
    class AlsoAnswers(Operation):
        def __post_init__(self) -> None:
            ok = (self.responses or {}).get("200")
            if ok is not None and not isinstance(ok, Schema):
                ok.content = {**(ok.content or {}), **{m: OpenAPIMediaType(schema=Schema(
                    type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)) for m in media_types}}

    return AlsoAnswers
