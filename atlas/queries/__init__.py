"""Every read the API, the command line and notebooks (atlas.open) answer, as plain functions over one Snapshot
(atlas.store.snapshot), returning the typed records of records.py; SQL users get the same answers from the macros."""

from ..errors import NotFound, QueryError
from ..methods import Threshold
from .card import feature_card
from .communities import Community, communities
from .lineage import flow_origins, lineage
from .orphans import feature_sharing, orphans
from .pairs import birth_death, layer_pairs, pair_matches, pair_matrix, permutation_pairs
from .records import LayerPair, Lineage, Orphans
from .saes import find_features, list_saes, sae_detail, sibling_groups, stacks
from .search import Hit, decoder_rows, nearest

__all__ = ["Community", "Hit", "LayerPair", "Lineage", "NotFound", "Orphans", "QueryError", "Threshold", "birth_death",
           "communities", "decoder_rows", "feature_card", "feature_sharing", "find_features", "flow_origins",
           "layer_pairs", "lineage", "list_saes", "nearest", "orphans", "pair_matches", "pair_matrix",
           "permutation_pairs", "sae_detail", "sibling_groups", "stacks"]
