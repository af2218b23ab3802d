"""Feature splitting across widths and seed consistency: a feature's width tree, width pairs, PW-MCC and MMCS."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from atlas.queries.records import Consistency, WidthPair, WidthTree
from atlas.queries.widths import consistency, width_pairs, width_tree

from ..errors import errors
from ..params import FeatureIndex, SaeId
from ..state import AtlasState

ModelPattern = Annotated[str, QueryParameter(min_length=1, max_length=512,
                                             description="Model name or SQL LIKE pattern ('%' for all).")]


class WidthsController(Controller):
    path = "/api"
    tags = ["widths and consistency"]

    @get("/saes/{sae_id:str}/features/{feature:int}/width-tree", operation_id="getWidthTree", sync_to_thread=True,
         responses=errors(404))
    def get_width_tree(self, atlas: NamedDependency[AtlasState], sae_id: SaeId, feature: FeatureIndex) -> WidthTree:
        """The feature in narrower and wider SAEs of its model and hook (built by `atlas match --pairs widths`):
        ancestors (depth < 0), descendants (depth > 0), each with its parent, cosine and class."""
        return width_tree(atlas.snapshot(), sae_id, feature)

    @get("/width-pairs", operation_id="listWidthPairs", sync_to_thread=True, responses=errors(404))
    def get_width_pairs(self, atlas: NamedDependency[AtlasState], model: ModelPattern = "%") -> list[WidthPair]:
        """Per narrow/wide SAE pair: how many narrow features are kept, split, duplicated (near-copy children)
        or absent in the wider one."""
        return width_pairs(atlas.snapshot(), model)

    @get("/consistency", operation_id="listConsistency", sync_to_thread=True, responses=errors(404))
    def get_consistency(self, atlas: NamedDependency[AtlasState], model: ModelPattern = "%") -> list[Consistency]:
        """Consistency of each sibling pair, two measures each beside what random decoders of the same widths
        and d_in give: PW-MCC (Song et al. 2025: mean decoder cosine of one one-to-one assignment of all
        features) and MMCS (Sharkey et al. 2022: mean best |decoder cosine| in the other SAE, both ways)."""
        return consistency(atlas.snapshot(), model)
