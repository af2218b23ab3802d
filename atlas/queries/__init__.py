"""The headline questions as plain functions over a DuckDB connection (the API and SQL macros agree)."""

from .communities import Community, communities
from .lineage import flow_origins, lineage
from .orphans import feature_sharing, orphans
from .pairs import birth_death, find_features, layer_pairs, pair_matrix, permutation_pairs, sibling_groups
from .records import Edge, FeatureSharing, LayerPair, Lineage, Node, NotFound, Orphans, QueryError
from .search import Hit, IndexCache, nearest

__all__ = ["Community", "Edge", "FeatureSharing", "Hit", "IndexCache", "LayerPair", "Lineage", "Node", "NotFound",
           "Orphans", "QueryError", "birth_death", "communities", "find_features", "sibling_groups", "feature_sharing", "flow_origins", "layer_pairs", "lineage",
           "nearest", "orphans", "pair_matrix", "permutation_pairs"]
