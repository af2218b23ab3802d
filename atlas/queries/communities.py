"""Feature communities of a stack: connected components of its match graph above tau (networkx)."""

from __future__ import annotations

import msgspec
import networkx as nx

from .. import budget
from ..errors import OverBudget, QueryError
from ..methods import Threshold
from .computed import require

MAX_EDGES = 2_000_000


class Community(msgspec.Struct):
    size: int
    first_layer: int
    last_layer: int
    members: list[tuple[str, int]]


def communities(snap, stack: str, threshold: Threshold | None = None, min_size: int = 2,
                assigned_only: bool = True) -> list[Community]:
    """Connected components of the stack's matches passing `threshold` (a tau on a similarity method), largest first."""
    threshold = threshold or Threshold.of()
    method = threshold.method.name
    if threshold.method.is_distance or threshold.quantile is not None:
        raise QueryError(f"communities join matches at a tau on similarity scores, not {threshold.label} of {method}")
    layer_of = dict(snap.stack(stack))
    require(snap, "stack", method, stack=stack)
    edges = snap.edges  # just the stack's pair files, not the view over every file of the atlas
    files = edges.files_of("matches", [(a, b, m) for a, b, m in edges.pairs if m == method
                                       and a in layer_of and b in layer_of])
    rows = snap.execute(
        "SELECT sae_a, feature_a, sae_b, feature_b FROM read_parquet(?, hive_partitioning = false) "
        "WHERE score >= ? AND (assigned OR NOT ?) LIMIT ?",
        [files, threshold.tau, assigned_only, MAX_EDGES + 1]).fetchall() if files else []
    if len(rows) > MAX_EDGES:
        raise OverBudget(f"communities: more than max_edges={MAX_EDGES} matches pass {threshold.label}; raise tau",
                         f"max_edges={MAX_EDGES}")
    budget.check("communities")
    g = nx.Graph()
    g.add_edges_from(((a, fa), (b, fb)) for a, fa, b, fb in rows)
    out = []
    for comp in nx.connected_components(g):
        budget.check("communities")
        if len(comp) >= min_size:
            layers = [layer_of[s] for s, _ in comp]
            out.append(Community(len(comp), min(layers), max(layers), sorted(comp, key=lambda n: (layer_of[n[0]], n[1]))))
    return sorted(out, key=lambda c: (-c.size, c.first_layer, c.members[0]))
