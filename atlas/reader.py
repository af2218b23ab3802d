"""The atlas from Python (notebooks): `atlas.open(path)` reads one published snapshot through the query functions
the API calls, so it answers with the same typed records; list answers also convert to Arrow and pandas."""

from __future__ import annotations

import functools
from pathlib import Path

import msgspec
import pyarrow as pa

from . import queries as q
from .queries.edges import FileEdges
from .queries.findings import findings
from .queries.records import (SAE, Edge, FeatureCard, FeatureSharing, FoundFeature, LayerFlow, LayerPair, Lineage,
                              Node, Orphans, SAEDetail, Stack)
from .store import Atlas


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


class Reader:
    """One snapshot of an atlas, open read-only (a job publishing meanwhile does not change it; open again to
    see its work). Use as a context manager, or call close()."""

    def __init__(self, path: str | Path):
        self.atlas = Atlas(Path(path))
        self.con = self.atlas.read()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    @functools.cached_property
    def files(self) -> FileEdges:
        """The snapshot's edge indexes and SAE rows (what the server holds per snapshot)."""
        return FileEdges.with_saes(self.con)

    @functools.cached_property
    def _indexes(self) -> q.IndexCache:
        """The atlas's FAISS indexes, loaded on first use."""
        return q.IndexCache(self.atlas.index_dir)

    def saes(self, stack: str | None = None, model: str | None = None) -> Records:
        """SAEs by stack and layer (records.SAE)."""
        return Records.of(q.list_saes(self.con, stack, model), SAE)

    def sae(self, sae_id: str) -> SAEDetail:
        return q.sae_detail(self.con, sae_id)

    def stacks(self) -> Records:
        return Records.of(q.stacks(self.con), Stack)

    def feature(self, sae_id: str, feature: int, top: int = 5) -> FeatureCard:
        """A feature's card: stats, label, Neuronpedia links, best matches both ways, examples."""
        return q.feature_card(self.con, sae_id, feature, top, self.files)

    def lineage(self, sae_id: str, feature: int, direction: str = "both", tau: float | None = 0.7,
                quantile: float | None = None, max_skip: int = 1, method: str = "decoder_cos",
                edges: str = "default") -> Lineage:
        """Ancestors and descendants of a feature in its stack (GET /api/saes/{sae}/features/{i}/lineage);
        .nodes and .edges are Records."""
        lin = q.checked_lineage(self.con, sae_id, feature, direction, tau, quantile, max_skip, method,
                                files=self.files, edges=edges)
        lin.nodes, lin.edges = Records.of(lin.nodes, Node), Records.of(lin.edges, Edge)
        return lin

    def orphans(self, sae_id: str, tau: float = 0.7, min_siblings: int = 1, by: str = "any") -> Orphans:
        """Features of an SAE shared with none of its matched siblings; .orphans is Records."""
        o = q.orphans(self.con, sae_id, tau, min_siblings, by)
        o.orphans = Records.of(o.orphans, FeatureSharing)
        return o

    def layer_pairs(self, stack: str | None = None, method: str = "decoder_cos", min_frac: float = 0.9,
                    min_score: float = 0.9, permutation_only: bool = False) -> Records:
        """Matched layer pairs with their stats; permutation-only ones match >= min_frac of features at >= min_score."""
        return Records.of(q.layer_pairs(self.con, stack, method, min_frac, min_score, permutation_only), LayerPair)

    def births_deaths(self, stack: str, method: str = "decoder_cos", tau: float = 0.7) -> Records:
        """Per layer: features with no assigned match >= tau from the layer before (births) and to the next (deaths)."""
        return Records.of(q.birth_death(self.con, stack, method, tau), LayerFlow)

    def search(self, sae_id: str | None = None, feature: int | None = None, vector=None, k: int = 10,
               saes: list[str] | None = None) -> Records:
        """The k features nearest by decoder direction to (sae_id, feature) or to a vector."""
        return Records.of(q.nearest(self._indexes, self.con, vector, sae_id, feature, k, saes), q.Hit)

    def find(self, label: str, limit: int = 50) -> Records:
        """Features whose label contains the text (case-insensitive)."""
        return Records.of(q.find_features(self.con, label, limit), FoundFeature)

    def findings(self, model: str = "%", stack: str = "%") -> dict:
        """The headline findings (`atlas findings`): each list of rows as Records."""
        return {k: Records(v) if isinstance(v, list) else v for k, v in findings(self.con, model, stack).items()}

    def sql(self, query: str, params: list | None = None) -> Records:
        """Rows of any read-only SQL over the atlas (its views and macros too), as dicts."""
        cur = self.con.cursor().execute(query, params or [])
        names = [d[0] for d in cur.description]
        return Records([dict(zip(names, r)) for r in cur.fetchall()], names)
