"""The headline questions as plain functions over a DuckDB connection (the API and SQL macros agree), returning
the typed records of records.py. The API, the command line and notebooks (atlas.open) read through them."""

from ..errors import NotFound, QueryError
from .card import feature_card
from .communities import Community, communities
from .lineage import checked_lineage, flow_origins, lineage
from .orphans import feature_sharing, orphans
from .pairs import birth_death, layer_pairs, pair_matches, pair_matrix, permutation_pairs
from .records import LayerPair, Lineage, Orphans
from .saes import find_features, list_saes, sae_detail, sibling_groups, stacks
from .search import Hit, IndexCache, nearest

__all__ = ["Community", "Hit", "IndexCache", "LayerPair", "Lineage", "NotFound", "Orphans", "QueryError", "birth_death",
           "checked_lineage", "communities", "feature_card", "feature_sharing", "find_features", "flow_origins",
           "layer_pairs", "lineage", "list_saes", "nearest", "orphans", "pair_matches", "pair_matrix",
           "permutation_pairs", "sae_detail", "sibling_groups", "stacks"]
