"""SAEs and their features: listing, one SAE, a feature's card and lineage, orphans, label search."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from atlas import queries as q
from atlas.queries.records import FeatureCard, FoundFeature, SAEDetail
from atlas.queries.steering import SteeringSet, steering_set, to_safetensors

from ..errors import errors
from ..params import THRESHOLD, Cursor, FeatureIndex, Name, SaeId, SharingTau, ThresholdDep, also_answers, page_offset
from ..settings import Settings
from ..state import AtlasState
from ..structs import OrphanPage, SAEPage


SAFETENSORS = "application/octet-stream"


class SaesController(Controller):
    path = "/api"
    tags = ["saes"]

    @get("/saes", operation_id="listSaes", sync_to_thread=True, responses=errors())
    def list_saes(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings],
                  stack: Name = None, model: Name = None, cursor: Cursor = None) -> SAEPage:
        """SAEs of the atlas, by stack and layer, one page at a time."""
        off, size = page_offset(cursor), settings.page_size
        items = q.list_saes(atlas.snapshot(), stack, model, size + 1, off)
        return SAEPage(items=items[:size], next=str(off + size) if len(items) > size else None)

    @get("/saes/{sae_id:str}", operation_id="getSae", sync_to_thread=True, responses=errors(404))
    def get_sae(self, atlas: NamedDependency[AtlasState], sae_id: SaeId) -> SAEDetail:
        """One SAE: metadata, labelled features, mean density and stored pairs per method."""
        return q.sae_detail(atlas.snapshot(), sae_id)

    @get("/saes/{sae_id:str}/features/{feature:int}", operation_id="getFeature", sync_to_thread=True,
         responses=errors(404))
    def get_feature(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex,
                    top: Annotated[int, QueryParameter(ge=1, le=50, description="Candidates per other SAE.")] = 5
                    ) -> FeatureCard:
        """A feature's card: stats, label, Neuronpedia links, best matches both ways, example contexts."""
        return q.feature_card(atlas.snapshot(), sae_id, feature, top)

    @get("/saes/{sae_id:str}/features/{feature:int}/lineage", operation_id="getLineage", sync_to_thread=True,
         responses=errors(404, 408, 422), dependencies=THRESHOLD)
    def get_lineage(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex, threshold: ThresholdDep,
                    direction: Annotated[Literal["both", "forward", "backward"], QueryParameter()] = "both",
                    max_skip: Annotated[int, QueryParameter(ge=0, le=8, description="Layers a link may skip.")] = 1,
                    include_sites: FromQuery[bool] = True,
                    edges: Annotated[Literal["default", "all"], QueryParameter(
                        description="default: carry, split, merge and gap edges; all: every candidate above "
                        "the bar (today's hairball on real families).")] = "default") -> q.Lineage:
        """Ancestors and descendants of a feature in its stack, as a DAG of typed edges (carry / split / merge /
        gap) with a one-line summary: born, splits, last seen, how it ends."""
        return q.lineage(atlas.snapshot(), sae_id, feature, threshold, direction=direction, max_skip=max_skip,
                         include_sites=include_sites, edges=edges)

    @get("/saes/{sae_id:str}/features/{feature:int}/steering", operation_id="getSteeringSet", sync_to_thread=True,
         responses=errors(404, 408, 422), operation_class=also_answers(SAFETENSORS), dependencies=THRESHOLD)
    def get_steering(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex, threshold: ThresholdDep,
                     format: Annotated[Literal["json", "safetensors"], QueryParameter(
                         description="json, or a safetensors file (tensors directions [n, d_in], norms, layers, "
                         "features; metadata hooks, sae_ids).")] = "json") -> Response[SteeringSet]:
        """The steering set of a feature: decoder directions, norms, hooks and layers of its carry chain."""
        s = steering_set(atlas.snapshot(), sae_id, feature, threshold)
        if format == "json":
            return Response(s)
        return Response(to_safetensors(s), media_type=SAFETENSORS,
                        headers={"Content-Disposition": f'attachment; filename="steering-{feature}.safetensors"'})

    @get("/orphans", operation_id="getOrphans", sync_to_thread=True, responses=errors(404))
    def get_orphans(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings],
                    sae: Annotated[str, QueryParameter(min_length=1, max_length=512, description="An SAE id.")],
                    tau: SharingTau = None, min_siblings: Annotated[int, QueryParameter(ge=0, le=1000)] = 1,
                    by: Annotated[Literal["any", "seed", "dataset"], QueryParameter()] = "any",
                    cursor: Cursor = None) -> OrphanPage:
        """Features of an SAE shared with none of its siblings (other seeds / datasets), one page at a time."""
        o = q.orphans(atlas.snapshot(), sae, tau, min_siblings, by)
        off, size = page_offset(cursor), settings.page_size
        return OrphanPage(sae_id=o.sae_id, siblings=o.siblings, n_features=o.n_features, n_orphans=o.n_orphans,
                          orphan_frac=o.orphan_frac, orphans=o.orphans[off:off + size],
                          next=str(off + size) if off + size < len(o.orphans) else None)

    @get("/features", operation_id="findFeatures", sync_to_thread=True, responses=errors())
    def find(self, atlas: NamedDependency[AtlasState],
             label: Annotated[str, QueryParameter(min_length=1, max_length=200, description="Text in the label.")],
             limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50) -> list[FoundFeature]:
        """Features whose label contains the text (case-insensitive)."""
        return q.find_features(atlas.snapshot(), label, limit)

