"""Nearest features by decoder direction (FAISS), by feature or by vector."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from atlas import queries as q

from ..errors import errors
from ..state import AtlasState
from ..structs import SearchRequest

K = Annotated[int, QueryParameter(ge=1, le=1000, description="Hits returned.")]


class SearchController(Controller):
    path = "/api/search"
    tags = ["search"]

    @post("/", operation_id="searchFeatures", sync_to_thread=True, status_code=200, responses=errors(404, 413, 415))
    def search(self, atlas: NamedDependency[AtlasState], data: JSONBody[SearchRequest]) -> list[q.Hit]:
        """The k features most cosine-similar to a vector, or to (sae_id, feature), among SAEs of that width."""
        return q.nearest(atlas.snapshot(), data.vector, data.sae_id, data.feature, data.k, data.saes)

    @get("/", operation_id="searchFeaturesGet", sync_to_thread=True, responses=errors(404))
    def search_get(self, atlas: NamedDependency[AtlasState],
                   sae_id: Annotated[str, QueryParameter(min_length=1, max_length=512)],
                   feature: Annotated[int, QueryParameter(ge=0, le=2**31 - 1)], k: K = 10) -> list[q.Hit]:
        """The k features most cosine-similar to (sae_id, feature)."""
        return q.nearest(atlas.snapshot(), None, sae_id, feature, k)

