"""Neuronpedia's feature paths on this server: /api/neuronpedia/{modelId}/{sourceId}/{index} -> lineage."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import PathParameter
from litestar.response import Redirect

from atlas.queries.records import NotFound

from ..errors import errors
from ..params import FeatureIndex
from ..state import AtlasState

Part = Annotated[str, PathParameter(min_length=1, max_length=256)]


class NeuronpediaController(Controller):
    path = "/api/neuronpedia"
    tags = ["neuronpedia"]

    @get("/{model_id:str}/{source_id:str}/{index:int}", operation_id="neuronpediaLineage", sync_to_thread=True,
         responses=errors(404))
    def from_neuronpedia(self, atlas: NamedDependency[AtlasState], model_id: Part, source_id: Part,
                         index: FeatureIndex) -> Redirect:
        """Open the lineage of a Neuronpedia feature (same path as its Neuronpedia page)."""
        row = atlas.cursor().execute("SELECT sae_id FROM saes WHERE neuronpedia_id = ?",
                                     [f"{model_id}/{source_id}"]).fetchone()
        if row is None:
            raise NotFound(f"no SAE in this atlas has neuronpedia_id {model_id}/{source_id}")
        return Redirect(f"/api/saes/{row[0]}/features/{index}/lineage")
