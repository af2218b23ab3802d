"""Stacks and SAE pairs: layer-pair stats, layer x layer matrices, communities, births and deaths, matches."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from atlas import queries as q
from atlas.methods import DEFAULT
from atlas.queries.records import LayerFlow, Matrix, PairMatch, SiblingGroup, Stack

from ..errors import errors
from ..params import SIMILARITY_THRESHOLD, Fraction, Limit, Method, Name, SaeId, Score, StackName, Stat, ThresholdDep
from ..state import AtlasState
from ..structs import LayerPairList


class PairsController(Controller):
    path = "/api"
    tags = ["stacks and pairs"]

    @get("/stacks", operation_id="listStacks", sync_to_thread=True, responses=errors())
    def list_stacks(self, atlas: NamedDependency[AtlasState]) -> list[Stack]:
        """Stacks: SAEs of one model, site, width, seed and dataset across layers."""
        return q.stacks(atlas.snapshot())

    @get("/layer-pairs", operation_id="listLayerPairs", sync_to_thread=True, responses=errors(404))
    def get_layer_pairs(self, atlas: NamedDependency[AtlasState], stack: Name = None, method: Method = DEFAULT,
                        min_frac: Fraction = 0.9, min_score: Score = 0.9,
                        permutation_only: FromQuery[bool] = False) -> LayerPairList:
        """Matched layer pairs with their stats; permutation-only ones match >= min_frac of features at >= min_score."""
        items = q.layer_pairs(atlas.snapshot(), stack, method, min_frac, min_score, permutation_only)
        return LayerPairList(items=items, min_frac=min_frac, min_score=min_score, method=method)

    @get("/stacks/{stack:str}/matrix", operation_id="getStackMatrix", sync_to_thread=True, responses=errors(404))
    def get_matrix(self, atlas: NamedDependency[AtlasState], stack: StackName, method: Method = DEFAULT,
                   stat: Stat = "matched_frac", min_score: Score = 0.9) -> Matrix:
        """Layer x layer matrix of one pair statistic (for heatmaps)."""
        return q.pair_matrix(atlas.snapshot(), stack, method, stat, min_score)

    @get("/stacks/{stack:str}/communities", operation_id="getStackCommunities", sync_to_thread=True,
         responses=errors(404, 408, 422), dependencies=SIMILARITY_THRESHOLD)
    def get_communities(self, atlas: NamedDependency[AtlasState], stack: StackName, threshold: ThresholdDep,
                        min_size: Annotated[int, QueryParameter(ge=2, le=1_000_000)] = 2,
                        limit: Limit = 100) -> list[q.Community]:
        """Feature communities: connected components of the stack's assigned matches above tau (a similarity)."""
        return q.communities(atlas.snapshot(), stack, threshold, min_size)[:limit]

    @get("/stacks/{stack:str}/births-deaths", operation_id="getStackBirthsDeaths", sync_to_thread=True,
         responses=errors(404, 408), dependencies=SIMILARITY_THRESHOLD)
    def get_births_deaths(self, atlas: NamedDependency[AtlasState], stack: StackName, threshold: ThresholdDep) -> list[LayerFlow]:
        """Births and deaths per layer: features with no assigned match >= tau (a similarity) from the layer before
        / to the next."""
        return q.birth_death(atlas.snapshot(), stack, threshold)

    @get("/pairs/{sae_a:str}/{sae_b:str}", operation_id="getPairMatches", sync_to_thread=True, responses=errors(404))
    def get_pair(self, atlas: NamedDependency[AtlasState], sae_a: SaeId, sae_b: SaeId, method: Method = DEFAULT,
                 limit: Limit = 100) -> list[PairMatch]:
        """Assigned matches of one SAE pair, best first."""
        return q.pair_matches(atlas.snapshot(), sae_a, sae_b, method, limit)

    @get("/sibling-groups", operation_id="listSiblingGroups", sync_to_thread=True, responses=errors())
    def get_groups(self, atlas: NamedDependency[AtlasState]) -> list[SiblingGroup]:
        """SAEs of one model, hook and width side by side (seeds and datasets): where orphans are counted."""
        return q.sibling_groups(atlas.snapshot())
