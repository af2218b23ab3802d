"""Typed results of the query functions: msgspec Structs shared by Python callers and the API."""

from __future__ import annotations

from typing import Any

import msgspec

from ..store.schema import LINEAGE_KINDS


class SAE(msgspec.Struct):
    sae_id: str
    model: str
    hook: str
    site: str | None
    layer: int
    d_in: int
    d_sae: int
    arch: str
    k: int | None
    seed: int | None
    dataset: str | None
    stack: str
    neuronpedia_id: str | None
    source: str
    sha256: str
    kind: str | None = "sae"
    """sae | transcoder | skip_transcoder (transcoders: site and layer are the output hook's)."""
    release: str | None = None
    variant: str | None = None
    hook_out: str | None = None
    d_out: int | None = None
    l0: float | None = None

    @classmethod
    def of(cls, row: dict) -> "SAE":
        """From an saes row (common.SAE_COLUMNS)."""
        return cls(**{k: row[k] for k in cls.__struct_fields__})


class SAEDetail(msgspec.Struct):
    sae: SAE
    n_labelled: int
    mean_density: float | None
    pairs: dict[str, int]


class SAESummary(msgspec.Struct):
    """One SAE as `atlas info` prints it: every saes column, its features in sum, its stored pairs."""

    row: dict[str, Any]
    n_features: int
    mean_threshold: float | None
    mean_density: float | None
    n_labelled: int
    pairs: dict[str, int]
    """Stored pairs per method."""


class Stack(msgspec.Struct):
    stack: str
    model: str
    site: str | None
    d_sae: int
    arch: str
    seed: int | None
    dataset: str | None
    n_saes: int
    first_layer: int
    last_layer: int


class SiblingGroup(msgspec.Struct):
    model: str
    hook: str
    d_sae: int
    layer: int
    saes: list[str]


class FoundFeature(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    label: str | None


class MatchRef(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    score: float
    rank: int
    assigned: bool
    direction: str
    """'out': this feature is sae_a (its top candidates); 'in': this feature is sae_b (candidates
    pointing to it, from score 0.5 up for similarity methods)."""
    kind: str | None = None
    """For decoder_cos matches with a neighbouring layer of the stack: carry | split | merge | candidate."""
    lineage: str | None = None
    """For decoder_cos matches: whether the default lineage (τ 0.7) follows this edge, and if not, why
    (below τ, assigned elsewhere, another stack, a layer apart)."""


class FeatureCard(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    label: str | None
    dec_norm: float
    threshold: float | None
    density: float | None
    max_act: float | None
    neuronpedia_url: str | None
    neuronpedia_embed: str | None
    lineage_url: str
    matches: dict[str, list[MatchRef]]
    examples: list[dict[str, Any]]
    lineage_notes: list[str] = []
    """Where the carry goes to (or comes from) a partner that scores lower than another: why (the assignment is
    one-to-one over the whole layer pair)."""


class PairMatch(msgspec.Struct):
    feature_a: int
    feature_b: int
    score: float
    rank: int


class Matrix(msgspec.Struct):
    stack: str
    method: str
    stat: str
    layers: list[int]
    values: list[list[float | None]]


class LayerFlow(msgspec.Struct):
    layer: int
    sae_id: str
    d_sae: int
    births: int | None
    deaths: int | None


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
    """One of atlas.store.schema.LINEAGE_KINDS: carry | gap | split | merge | candidate (the edge_kind SQL macro)."""
    causal_drop: float | None = None
    """Where `atlas check-edges` checked this edge: feature_b's relative drop when feature_a is ablated."""
    causal_holds: bool | None = None
    """That drop is beyond the 95th percentile of its pair's random pairs (checks.py)."""


LineageLayer = msgspec.defstruct(
    "LineageLayer", [("layer", int), ("nodes", int), *((kind, int, 0) for kind in LINEAGE_KINDS)],
    module=__name__)
LineageLayer.__doc__ = ("One layer of a lineage: its nodes, and the edges into them by kind (what the summary line "
                        "says), a count per kind of atlas.store.schema.LINEAGE_KINDS.")


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
    """How the lineage ends: survives to the last layer | dies | not followed forward (direction=backward)."""
    summary: str = ""
    """One line from exactly these nodes and edges: born, per layer its features and edges by kind, the last
    layer with a node, how it ends."""
    layers: list[LineageLayer] = []
    """Per layer with a node, first to last: the counts the summary states."""

    def to_networkx(self):
        """A networkx DiGraph: nodes (sae_id, feature) with the Node's fields, edges a -> b with the Edge's."""
        return _graph(self.nodes, self.edges, lambda e: ((e.sae_a, e.feature_a), (e.sae_b, e.feature_b)))


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
    frac_at_min_score: float | None
    """None for distance methods (no score bar)."""
    mean_score: float | None
    median_score: float | None
    mse_after_perm: float | None
    identity_frac: float | None
    permutation_only: bool
    stack: str | None = None
    """The stack both SAEs belong to (None only from an atlas no job has opened since this column came)."""


class FeatureSharing(msgspec.Struct):
    feature: int
    n_shared: int
    n_siblings: int
    label: str | None = None
    top_tokens: list[str] | None = None
    """Firing tokens of its top examples (orphans only), as lineage nodes carry them."""


class Orphans(msgspec.Struct):
    sae_id: str
    siblings: list[str]
    n_features: int
    n_orphans: int
    orphan_frac: float
    orphans: list[FeatureSharing]


class WidthNode(msgspec.Struct):
    sae_id: str
    d_sae: int
    feature: int
    depth: int
    """0 = the feature asked for; -1, -2 narrower ancestors; 1, 2 wider descendants."""
    parent_sae: str | None
    parent_feature: int | None
    score: float | None
    """Decoder cosine with its parent."""
    cls: str | None = msgspec.field(default=None, name="class")
    """As a narrow feature: kept | split | duplicate | absent in the next wider SAE (None at the widest)."""
    n_children: int | None = None
    combo_cos: float | None = None
    """Cosine with the best non-negative combination of its children."""
    label: str | None = None
    top_tokens: list[str] | None = None
    min_child_cos: float | None = None
    """Least cosine between two of its children (duplicates: near-copies, at least 0.9)."""


class WidthTree(msgspec.Struct):
    root: WidthNode
    nodes: list[WidthNode]
    summary: str
    """One line: how the feature changes as the dictionary grows."""

    def to_networkx(self):
        """A networkx DiGraph: nodes (sae_id, feature) with the WidthNode's fields, an edge from each node's parent
        (narrower) to it with its cosine as score."""
        edges = [n for n in self.nodes if n.parent_sae is not None]
        return _graph(self.nodes, edges, lambda n: ((n.parent_sae, n.parent_feature), (n.sae_id, n.feature)),
                      lambda n: {"score": n.score})


class WidthPair(msgspec.Struct):
    sae_a: str
    sae_b: str
    layer: int
    d_a: int
    d_b: int
    kept: int
    split: int
    duplicate: int
    absent: int
    mean_split_children: float | None
    mean_split_combo_cos: float | None
    model: str | None = None


class Consistency(msgspec.Struct):
    sae_a: str
    sae_b: str
    layer: int
    relation: str
    """How the siblings differ: seed (same dataset), dataset (same seed), seed and dataset, or variant."""
    pw_mcc: float | None
    """PW-MCC (Song et al. 2025): mean decoder cosine of one one-to-one assignment of all features (over the
    min(n_a, n_b) pairs). None on an atlas migrated from before it was computed: rerun `atlas match`."""
    pw_mcc_random: float | None
    """The same for random unit decoders of these widths and d_in (simulated)."""
    mmcs: float | None
    """MMCS (Sharkey et al. 2022): mean best |decoder cosine| in the other SAE, both directions."""
    mmcs_random: float | None
    """The same for random unit decoders of these widths and d_in (closed form)."""
    model: str | None = None


def _graph(nodes, edges, ends, data=msgspec.structs.asdict):
    import networkx as nx

    g = nx.DiGraph()
    g.add_nodes_from(((n.sae_id, n.feature), msgspec.structs.asdict(n)) for n in nodes)
    g.add_edges_from((*ends(e), data(e)) for e in edges)
    return g
