"""Typed results of the query functions: msgspec Structs shared by Python callers and the API."""

from __future__ import annotations

import msgspec


class QueryError(ValueError):
    """A query that cannot be answered as asked: the message says why (unknown SAE, bad parameter)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class NotFound(QueryError):
    def __init__(self, message: str):
        super().__init__(message, 404)


class Node(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    site: str | None
    label: str | None = None
    neuronpedia_url: str | None = None
    origin: str | None = None
    """Feature-flow class of this residual node where MLP/attention SAEs of its layer exist."""
    top_tokens: list[str] | None = None
    """Firing tokens of its top examples, best first (a label where features.label is empty)."""


class Edge(msgspec.Struct):
    sae_a: str
    feature_a: int
    sae_b: str
    feature_b: int
    method: str
    score: float
    rank: int
    assigned: bool
    gap: int
    """Layers skipped (0 = adjacent layers of the stack)."""
    kind: str = "candidate"
    """carry | split | merge | gap | candidate (lineage.py; the edge_kind SQL macro)."""


class Lineage(msgspec.Struct):
    root: Node
    nodes: list[Node]
    edges: list[Edge]
    birth_layer: int
    death_layer: int
    lifespan: int
    """Layers from birth to death, both included."""
    method: str
    threshold: str
    """The score bar used: 'tau=0.7' or 'quantile=0.5 per pair'."""
    edges_mode: str = "default"
    """default (carry, split, merge, gap) or all (every passing candidate)."""
    ending: str = ""
    """How the root's line ends: survives to the last layer | dies | splits into k | merges into SAE/feature."""
    summary: str = ""
    """One line: born, splits, last seen, ending."""


class LayerPair(msgspec.Struct):
    sae_a: str
    sae_b: str
    layer_a: int
    layer_b: int
    method: str
    n_a: int
    n_b: int
    n_matched: int
    matched_frac: float
    frac_at_min_score: float
    mean_score: float | None
    median_score: float | None
    mse_after_perm: float | None
    identity_frac: float | None
    permutation_only: bool


class FeatureSharing(msgspec.Struct):
    feature: int
    n_shared: int
    n_siblings: int
    label: str | None = None


class Orphans(msgspec.Struct):
    sae_id: str
    siblings: list[str]
    n_features: int
    n_orphans: int
    orphan_frac: float
    orphans: list[FeatureSharing]
