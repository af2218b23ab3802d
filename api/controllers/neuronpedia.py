"""Neuronpedia both ways: its feature paths on this server (/api/neuronpedia/{modelId}/{sourceId}/{index}
opens the explorer's feature page, or the lineage JSON for JSON clients), and atlas selections out as
Neuronpedia lists (lineage, orphans, a pair's matches) with the quick-list URL that opens them there."""

from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.enums import MediaType
from litestar.params import PathParameter, QueryParameter
from litestar.response import Redirect

from atlas.queries.neuronpedia import NeuronpediaList, lineage_list, orphans_list, pair_list, sae_of

from ..errors import errors
from ..params import THRESHOLD, FeatureIndex, SaeId, SharingTau, ThresholdDep
from ..state import AtlasState

Part = Annotated[str, PathParameter(min_length=1, max_length=256)]
Sharing = Annotated[Literal["any", "seed", "dataset"], QueryParameter(description="Siblings that count: any, other seed, other dataset.")]


class NeuronpediaController(Controller):
    path = "/api/neuronpedia"
    tags = ["neuronpedia"]

    @get("/{model_id:str}/{source_id:str}/{index:int}", operation_id="neuronpediaFeature", sync_to_thread=True,
         responses=errors(404))
    def from_neuronpedia(self, request: Request, atlas: NamedDependency[AtlasState], model_id: Part,
                         source_id: Part, index: FeatureIndex) -> Redirect:
        """A Neuronpedia feature path: browsers go to the explorer's feature page, JSON clients
        (Accept: application/json) to the feature's lineage."""
        sae_id = sae_of(atlas.snapshot(), model_id, source_id)
        # Browsers navigating name text/html; API clients (*/*, application/json) get the JSON lineage.
        if MediaType.HTML in request.headers.get("accept", ""):
            return Redirect(f"/#/feature/{sae_id}/{index}")
        return Redirect(f"/api/saes/{sae_id}/features/{index}/lineage")

    @get("/lists/lineage/{sae_id:str}/{feature:int}", operation_id="neuronpediaLineageList", sync_to_thread=True,
         responses=errors(404), dependencies=THRESHOLD)
    def lineage(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex,
                threshold: ThresholdDep) -> NeuronpediaList:
        """A feature's lineage as a Neuronpedia list, in layer order."""
        return lineage_list(atlas.snapshot(), sae_id, feature, threshold)

    @get("/lists/orphans/{sae_id:str}", operation_id="neuronpediaOrphanList", sync_to_thread=True,
         responses=errors(404))
    def orphans(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, tau: SharingTau = None,
                by: Sharing = "any") -> NeuronpediaList:
        """An SAE's orphan features (shared with none of its matched siblings) as a Neuronpedia list."""
        return orphans_list(atlas.snapshot(), sae_id, tau, by)

    @get("/lists/pair/{sae_a:str}/{sae_b:str}", operation_id="neuronpediaPairList", sync_to_thread=True,
         responses=errors(404), dependencies=THRESHOLD)
    def pair(self, atlas: NamedDependency[AtlasState], sae_a: SaeId, sae_b: SaeId, threshold: ThresholdDep) -> NeuronpediaList:
        """A pair's assigned matches past the bar as a Neuronpedia list, both sides, best first."""
        return pair_list(atlas.snapshot(), sae_a, sae_b, threshold)
