"""Matches of one snapshot read from its table files by point lookups (atlas.store.parts), for lineage,
the feature card and feature-flow origins.

A pair's matches file is sorted by feature_a, so a feature's outgoing rows sit in one row group; similarity
methods also have a reverse file (rows >= the method's index floor, sorted by feature_b) for incoming rows.
Below the floor, and for distance methods (no reverse file), incoming rows come from a filtered read of the
pair's own file: bounded by that pair, never by the atlas. Nothing here holds rows between requests: the
catalog and the SAE rows grow with SAEs and pairs, the reader's cache of footers is a bounded LRU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..match.methods import METHODS
from ..store.parts import PartReader, catalog
from ..store.schema import files_root
from .common import SAE_COLUMNS
from .records import NotFound

EDGE_COLUMNS = ["feature_a", "feature_b", "score", "rank", "assigned", "rank_b"]
_KINDS = np.array(["carry", "split", "merge", "candidate"])


def edge_kinds(assigned: np.ndarray, rank: np.ndarray, rank_b: np.ndarray) -> np.ndarray:
    """Kind of each edge (schema.py's edge_kind macro, vectorised): carry | split | merge | candidate."""
    return _KINDS[np.select([assigned, rank_b == 1, rank == 1], [0, 1, 2], 3)]


class FileEdges:
    """The matches of one snapshot, looked up in its table files: outgoing rows by feature_a in the pair's file,
    incoming rows by feature_b in its reverse file (or a filtered read of the pair's file)."""

    def __init__(self, root: str | Path | None, files: dict, saes: dict[str, dict] | None = None,
                 reader: PartReader | None = None, examples: set[str] | None = None):
        self.root = Path(root) if root is not None else None
        self.reader = reader if reader is not None or self.root is None else PartReader(self.root)
        self.saes = saes
        self.examples = examples
        """SAEs with example contexts (None: unknown, ask SQL), so lineages of the others skip that query."""
        self.catalog = files
        self._stacks: dict[str, list[tuple[str, int]]] | None = None
        # (sae_a, sae_b, method) -> (file, reverse_file), and each SAE's pairs from either end
        self.pairs = {(a, b, m): f for (t, a, b, m), f in files.items() if t == "matches"}
        self.out_of: dict[str, list[tuple[str, str]]] = {}
        self.into: dict[str, list[tuple[str, str]]] = {}
        for a, b, m in sorted(self.pairs):
            self.out_of.setdefault(a, []).append((b, m))
            self.into.setdefault(b, []).append((a, m))

    @classmethod
    def of(cls, con, saes: dict[str, dict] | None = None, reader: PartReader | None = None,
           examples: set[str] | None = None) -> "FileEdges":
        """The table files a connection's snapshot names (an atlas without any: no edges)."""
        root = files_root(con)
        return cls(root, catalog(con) if root is not None else {}, saes, reader, examples)

    @classmethod
    def with_saes(cls, con) -> "FileEdges":
        """FileEdges plus the snapshot's SAE rows (what a server holds per snapshot)."""
        rows = con.execute(f"SELECT {', '.join(SAE_COLUMNS)} FROM saes").fetchall()
        return cls.of(con, {r[0]: dict(zip(SAE_COLUMNS, r)) for r in rows})

    def sae(self, sae_id: str) -> dict:
        """The SAE's row in this snapshot (NotFound as sae_row says it)."""
        row = (self.saes or {}).get(sae_id)
        if row is None:
            raise NotFound(f"unknown SAE {sae_id!r}: GET /api/saes lists the SAEs in this atlas")
        return row

    def stack(self, stack: str) -> list[tuple[str, int]]:
        """(sae_id, layer) of a stack's SAEs in layer order."""
        if self._stacks is None:
            stacks: dict[str, list[tuple[str, int]]] = {}
            for row in sorted((self.saes or {}).values(), key=lambda r: (r["layer"], r["sae_id"])):
                stacks.setdefault(row["stack"], []).append((row["sae_id"], row["layer"]))
            self._stacks = stacks
        if stack not in self._stacks:
            raise NotFound(f"unknown stack {stack!r}: GET /api/stacks lists them")
        return self._stacks[stack]

    @property
    def flow_sites(self) -> bool:
        """Whether any MLP-out or attention-out SAE is in the snapshot (flow origins need them)."""
        return any(row["site"] in ("mlp", "attn") for row in (self.saes or {}).values())

    def path(self, rel: str) -> Path:
        return self.root / rel

    def forward(self, sae_a: str, sae_b: str, method: str, features, columns=EDGE_COLUMNS) -> pa.Table:
        """Rows of pair (sae_a, sae_b, method) whose feature_a is one of `features` (empty: no such pair)."""
        f = self.pairs.get((sae_a, sae_b, method))
        if f is None:
            return _empty(columns)
        return _lookup(self.reader, f[0], "feature_a", features, columns)

    def backward(self, sae_a: str, sae_b: str, method: str, features, bar: float | None = None,
                 columns=EDGE_COLUMNS) -> pa.Table:
        """Rows of pair (sae_a, sae_b, method) whose feature_b is one of `features`. `bar`: the lowest score
        the caller keeps (None: every row). From the reverse file when it holds every row the caller keeps,
        else a filtered read of the pair's file (distance methods, or a bar below the index floor)."""
        f = self.pairs.get((sae_a, sae_b, method))
        if f is None:
            return _empty(columns)
        floor = METHODS[method].index_floor if method in METHODS else None
        if f[1] is not None and floor is not None and bar is not None and bar >= floor:
            return _lookup(self.reader, f[1], "feature_b", features, columns)
        return _scan(self.path(f[0]), "feature_b", features, columns)

    def edges(self, sae: str, features, targets: list[str], forward: bool, method: str,
              bar: float | None = None) -> list[tuple]:
        """(sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned, kind) of the candidates between
        `features` of `sae` and each SAE of `targets`, in the given direction (lineage's step)."""
        out = []
        for other in targets:
            a, b = (sae, other) if forward else (other, sae)
            t = self.forward(a, b, method, features) if forward else self.backward(a, b, method, features, bar)
            if not t.num_rows:
                continue
            kinds = edge_kinds(t["assigned"].to_numpy(zero_copy_only=False), t["rank"].to_numpy(),
                               t["rank_b"].fill_null(0).to_numpy())
            out += [(a, fa, b, fb, method, score, rank, assigned, str(kind)) for fa, fb, score, rank, assigned, kind in
                    zip(*(t[c].to_pylist() for c in EDGE_COLUMNS[:5]), kinds)]
        return out

    def outgoing(self, sae: str, feature: int, top: int) -> list[tuple]:
        """(method, sae_b, feature_b, score, rank, assigned, 'out') of a feature's candidates of rank <= top."""
        out = []
        for other, method in self.out_of.get(sae, []):
            t = self.forward(sae, other, method, [feature], ["feature_b", "score", "rank", "assigned"])
            out += [(method, other, fb, s, r, asg, "out") for fb, s, r, asg in zip(
                *(t[c].to_pylist() for c in t.column_names)) if r <= top]
        return out

    def incoming(self, sae: str, feature: int) -> list[tuple]:
        """(method, sae_a, feature_a, score, rank, assigned, 'in') of the matches into a feature: rows >= the
        index floor for similarity methods, every row for distances."""
        out = []
        for other, method in self.into.get(sae, []):
            floor = METHODS[method].index_floor if method in METHODS else None
            t = self.backward(other, sae, method, [feature], floor, ["feature_a", "score", "rank", "assigned"])
            out += [(method, other, fa, s, r, asg, "in") for fa, s, r, asg in zip(
                *(t[c].to_pylist() for c in t.column_names)) if floor is None or s >= floor]
        return out

    def files_of(self, table: str, pairs) -> list[str]:
        """Absolute paths of the files of `pairs` ((sae_a, sae_b, method) triples) that exist. SQL reads them with
        read_parquet(..., hive_partitioning = false): the ids in the file, not the (URL-quoted) folder names."""
        return [str(self.path(self.pairs[p][0])) for p in pairs if p in self.pairs] if table == "matches" else []


def _lookup(reader: PartReader, rel: str, column: str, values, columns: list[str]) -> pa.Table:
    """reader.rows with just `columns` (it filters on `column`, so that one is read too)."""
    t = reader.rows(rel, column, values, columns if column in columns else [column, *columns])
    return t.select(columns)


def _scan(path: Path, column: str, values, columns: list[str]) -> pa.Table:
    """Rows of one file whose `column` (not its sort column) is one of `values`: read that column, then only
    the row groups holding a hit (3x faster than a filtered read of every column)."""
    values = pa.array(np.unique(np.asarray(list(values), np.int64)), pa.int32())
    pf = pq.ParquetFile(path)
    hits = np.nonzero(pc.is_in(pf.read(columns=[column], use_threads=False)[column], values)
                      .to_numpy(zero_copy_only=False))[0]
    meta = pf.metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    groups = np.unique(np.searchsorted(starts, hits, side="right") - 1).tolist()
    read = columns if column in columns else [column, *columns]
    t = pf.read_row_groups(groups, columns=read, use_threads=False) if groups else _empty(read)
    return t.filter(pc.is_in(t[column], values)).select(columns)


def _empty(columns) -> pa.Table:
    from ..store.parts import arrow_schema

    schema = arrow_schema("matches")
    return pa.schema([schema.field(c) for c in columns]).empty_table()
