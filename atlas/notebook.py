"""The atlas from Python (notebooks): `atlas.open(path)` holds one published snapshot and answers every data route of
the HTTP API with the same query function and the same typed records (`GET .../lineage` is `a.lineage(...)`); list
answers also convert to Arrow and pandas. Defaults come from where the API's do: the method registry (the method and
its threshold) and the query functions. tests/test_notebook.py walks the API's route table and fails on a route missing here.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

from . import queries as q
from .errors import QueryError
from .methods import DEFAULT, Threshold
from .queries import neuronpedia as npd
from .queries import steering, widths
from .queries.findings import findings
from .queries.records import (SAE, Edge, FeatureCard, FeatureSharing, FoundFeature, LayerFlow, LayerPair, Lineage,
                              Matrix, Node, Orphans, PairMatch, SAEDetail, SiblingGroup, Stack, WidthNode, WidthTree)
from .store import Atlas

ROUTES: dict[str, str] = {}
"""operation_id of an API route -> the method here that answers it (filled by @answers)."""


def answers(*operation_ids: str):
    """Mark a method as the notebook's answer to these API routes (their OpenAPI operation ids)."""
    def mark(f):
        for op in operation_ids:
            ROUTES[op] = f.__name__
        return f
    return mark


class Records(list):
    """A list of records (msgspec Structs or dicts) with .to_arrow() and .to_pandas(), one row per record."""

    def __init__(self, rows=(), columns: list[str] | None = None):
        super().__init__(rows)
        self.columns = columns
        """Column names (the record type's fields, or a SQL answer's columns): an empty answer keeps them."""

    @classmethod
    def of(cls, rows, record: type) -> "Records":
        """Records of one msgspec Struct type."""
        return cls(rows, [f.encode_name for f in msgspec.structs.fields(record)])

    def to_arrow(self) -> pa.Table:
        if not self:
            return pa.table({c: pa.nulls(0) for c in self.columns or []})
        return pa.Table.from_pylist(msgspec.to_builtins(list(self)))

    def to_pandas(self):
        return self.to_arrow().to_pandas()


class Notebook:
    """One snapshot of an atlas, open read-only (a job publishing meanwhile does not change it; open again to see
    its work). Use as a context manager, or call close()."""

    def __init__(self, path: str | Path):
        self.atlas = Atlas(Path(path))
        self.snap = self.atlas.read()

    def __enter__(self) -> "Notebook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.snap.close()

    # -- SAEs and features ----------------------------------------------------------------------------------

    @answers("listSaes")
    def saes(self, stack: str | None = None, model: str | None = None) -> Records:
        """SAEs by stack and layer (records.SAE)."""
        return Records.of(q.list_saes(self.snap, stack, model), SAE)

    @answers("getSae")
    def sae(self, sae_id: str) -> SAEDetail:
        return q.sae_detail(self.snap, sae_id)

    @answers("getFeature")
    def feature(self, sae_id: str, feature: int, top: int = 5) -> FeatureCard:
        """A feature's card: stats, label, Neuronpedia links, best matches both ways, examples."""
        return q.feature_card(self.snap, sae_id, feature, top)

    @answers("getLineage")
    def lineage(self, sae_id: str, feature: int, method: str = DEFAULT, tau: float | None = None,
                quantile: float | None = None, direction: str = "both", max_skip: int = 1, include_sites: bool = True,
                edges: str = "default") -> Lineage:
        """Ancestors and descendants of a feature in its stack at the method's threshold (tau, or a per-pair quantile;
        neither: the method's default); .nodes and .edges are Records, .to_networkx() a DiGraph."""
        lin = q.lineage(self.snap, sae_id, feature, Threshold.of(method, tau, quantile), direction=direction,
                        max_skip=max_skip, include_sites=include_sites, edges=edges)
        lin.nodes, lin.edges = Records.of(lin.nodes, Node), Records.of(lin.edges, Edge)
        return lin

    @answers("getSteeringSet")
    def steering(self, sae_id: str, feature: int, method: str = DEFAULT, tau: float | None = None,
                 quantile: float | None = None) -> steering.SteeringSet:
        """The decoder directions of a feature's carry chain (`steering.to_safetensors` writes them as a file)."""
        return steering.steering_set(self.snap, sae_id, feature, Threshold.of(method, tau, quantile))

    @answers("getOrphans")
    def orphans(self, sae_id: str, tau: float | None = None, min_siblings: int = 1, by: str = "any") -> Orphans:
        """Features of an SAE shared with none of its matched siblings; .orphans is Records."""
        o = q.orphans(self.snap, sae_id, tau, min_siblings, by)
        o.orphans = Records.of(o.orphans, FeatureSharing)
        return o

    @answers("findFeatures")
    def find(self, label: str, limit: int = 50) -> Records:
        """Features whose label contains the text (case-insensitive)."""
        return Records.of(q.find_features(self.snap, label, limit), FoundFeature)

    @answers("searchFeatures", "searchFeaturesGet")
    def search(self, sae_id: str | None = None, feature: int | None = None, vector=None, k: int = 10,
               saes: list[str] | None = None) -> Records:
        """The k features nearest by decoder direction to (sae_id, feature) or to a vector."""
        return Records.of(q.nearest(self.snap, vector, sae_id, feature, k, saes), q.Hit)

    def decoder(self, sae_id: str, features) -> np.ndarray:
        """[len(features), d_in] float32: the features' decoder rows W_dec[features] (from the FAISS index's unit rows
        and the stored norms)."""
        return q.decoder_rows(self.snap, sae_id, [int(f) for f in features])

    def sae_lens(self, sae_id: str, features=None, device: str = "cpu"):
        """The SAE as a sae_lens `SAE`, loaded by sae_lens from its source (a sae_lens folder or release; other
        layouts: QueryError) and checked against the atlas's decoder directions; with `features`, an SAE of just
        those features (their encoder columns, decoder rows and thresholds), in that order."""
        from .saelens import to_sae_lens

        return to_sae_lens(self.snap, sae_id, None if features is None else [int(f) for f in features], device)

    # -- stacks and pairs -----------------------------------------------------------------------------------

    @answers("listStacks")
    def stacks(self) -> Records:
        return Records.of(q.stacks(self.snap), Stack)

    @answers("listLayerPairs")
    def layer_pairs(self, stack: str | None = None, method: str = DEFAULT, min_frac: float = 0.9,
                    min_score: float = 0.9, permutation_only: bool = False) -> Records:
        """Matched layer pairs with their stats; permutation-only ones match >= min_frac of features at >= min_score."""
        return Records.of(q.layer_pairs(self.snap, stack, method, min_frac, min_score, permutation_only), LayerPair)

    @answers("getStackMatrix")
    def matrix(self, stack: str, method: str = DEFAULT, stat: str = "matched_frac", min_score: float = 0.9) -> Matrix:
        """Layer x layer matrix of one pair statistic (for heatmaps)."""
        return q.pair_matrix(self.snap, stack, method, stat, min_score)

    @answers("getStackCommunities")
    def communities(self, stack: str, method: str = DEFAULT, tau: float | None = None, min_size: int = 2) -> Records:
        """Connected components of the stack's assigned matches above tau."""
        return Records.of(q.communities(self.snap, stack, Threshold.of(method, tau, per_pair=False), min_size),
                          q.Community)

    @answers("getStackBirthsDeaths")
    def births_deaths(self, stack: str, method: str = DEFAULT, tau: float | None = None) -> Records:
        """Per layer: features with no assigned match >= tau from the layer before (births) and to the next (deaths)."""
        return Records.of(q.birth_death(self.snap, stack, Threshold.of(method, tau, per_pair=False)), LayerFlow)

    @answers("getPairMatches")
    def pair(self, sae_a: str, sae_b: str, method: str = DEFAULT, limit: int = 100) -> Records:
        """Assigned matches of one SAE pair, best first."""
        return Records.of(q.pair_matches(self.snap, sae_a, sae_b, method, limit), PairMatch)

    @answers("listSiblingGroups")
    def sibling_groups(self) -> Records:
        """SAEs of one model, hook and width side by side: where orphans are counted."""
        return Records.of(q.sibling_groups(self.snap), SiblingGroup)

    # -- widths and consistency -----------------------------------------------------------------------------

    @answers("getWidthTree")
    def width_tree(self, sae_id: str, feature: int) -> WidthTree:
        """The feature in narrower and wider SAEs of its hook; .nodes is Records, .to_networkx() a DiGraph."""
        tree = widths.width_tree(self.snap, sae_id, feature)
        tree.nodes = Records.of(tree.nodes, WidthNode)
        return tree

    @answers("listWidthPairs")
    def width_pairs(self, model: str = "%") -> Records:
        return Records(widths.width_pairs(self.snap, model))

    @answers("listConsistency")
    def consistency(self, model: str = "%") -> Records:
        """PW-MCC and MMCS of each sibling pair, each beside its random baseline."""
        return Records(widths.consistency(self.snap, model))

    # -- Neuronpedia ----------------------------------------------------------------------------------------

    @answers("neuronpediaFeature")
    def from_neuronpedia(self, model_id: str, source_id: str, index: int) -> FeatureCard:
        """The card of the feature at a Neuronpedia path (modelId/sourceId/index)."""
        return self.feature(npd.sae_of(self.snap, model_id, source_id), index)

    @answers("neuronpediaLineageList")
    def neuronpedia_lineage(self, sae_id: str, feature: int, method: str = DEFAULT, tau: float | None = None,
                            quantile: float | None = None) -> npd.NeuronpediaList:
        """A feature's lineage as a Neuronpedia list, with the quick-list URL that opens it there."""
        return npd.lineage_list(self.snap, sae_id, feature, Threshold.of(method, tau, quantile))

    @answers("neuronpediaOrphanList")
    def neuronpedia_orphans(self, sae_id: str, tau: float | None = None, by: str = "any") -> npd.NeuronpediaList:
        return npd.orphans_list(self.snap, sae_id, tau, by)

    @answers("neuronpediaPairList")
    def neuronpedia_pair(self, sae_a: str, sae_b: str, method: str = DEFAULT, tau: float | None = None,
                         quantile: float | None = None) -> npd.NeuronpediaList:
        return npd.pair_list(self.snap, sae_a, sae_b, Threshold.of(method, tau, quantile))

    # -- SQL, tables, findings ------------------------------------------------------------------------------

    @answers("runSql", "runSqlPost")
    def sql(self, query: str, params: list | None = None) -> Records:
        """Rows of any read-only SQL over the atlas (its views and macros too), as dicts."""
        cur = self.snap.execute(query, params or [])
        names = [d[0] for d in cur.description]
        return Records([dict(zip(names, r)) for r in cur.fetchall()], names)

    @answers("exportTable")
    def table(self, name: str) -> pa.RecordBatchReader:
        """A whole table (saes, features, matches, pair_stats, ...) as Arrow record batches, read as they come."""
        if not name.isidentifier():
            raise QueryError(f"no table {name!r}")
        return self.snap.cursor().sql(f"SELECT * FROM {name}").to_arrow_reader(65_536)

    @answers("getBuild")
    def build(self):
        """How far the build writing into this atlas has come (None: no build has run here)."""
        from .status import read_status

        return read_status(self.atlas.path)

    def findings(self, model: str = "%", stack: str = "%") -> dict:
        """The headline findings (`atlas findings`): each list of rows as Records."""
        return {k: Records(v) if isinstance(v, list) else v for k, v in findings(self.snap, model, stack).items()}
