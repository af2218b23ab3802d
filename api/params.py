"""Typed, ranged request parameters shared by the controllers (their ranges appear in the OpenAPI document)."""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from litestar.params import PathParameter, QueryParameter

from atlas.match.methods import METHODS, NAMES
from atlas.queries.pairs import STATS
from atlas.queries.records import QueryError

MethodName = Literal[NAMES]  # type: ignore[valid-type]
StatName = Literal[STATS]  # type: ignore[valid-type]
Stat = Annotated[StatName, QueryParameter(description="Pair statistic of each cell.")]

SaeId = Annotated[str, PathParameter(min_length=1, max_length=512, description="An SAE id (GET /api/saes).")]
StackName = Annotated[str, PathParameter(min_length=1, max_length=512, description="A stack (GET /api/stacks).")]
FeatureIndex = Annotated[int, PathParameter(ge=0, le=2**31 - 1, description="Feature index within the SAE.")]
Method = Annotated[MethodName, QueryParameter(description="Matching method: " + "; ".join(
    f"{n} ({m.description}, {'higher' if m.higher_is_better else 'lower'} is better)" for n, m in METHODS.items()))]
Tau = Annotated[float, QueryParameter(ge=-1.0, le=1.0, description="Score bar (cosine or correlation).")]
Fraction = Annotated[float, QueryParameter(ge=0.0, le=1.0)]
Score = Annotated[float, QueryParameter(ge=-1.0, le=1.0, description="Score bar of a similarity method.")]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="Most items returned.")]
Cursor = Annotated[str | None, QueryParameter(max_length=64, description="The `next` value of the previous page.")]
Name = Annotated[str | None, QueryParameter(min_length=1, max_length=512)]


def page_token(offset: int | None) -> str | None:
    return base64.urlsafe_b64encode(str(offset).encode()).decode() if offset is not None else None


def page_offset(token: str | None) -> int:
    """The offset a `next` token stands for; a forged or stale token is a clear 400."""
    if not token:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, UnicodeError):
        offset = -1
    if not 0 <= offset < 2**31:
        raise QueryError(f"bad page token {token!r}: pass the 'next' value of the previous page")
    return offset
