"""The edge catalog of one snapshot: its matches read by point lookups, for lineage, the feature card and
feature-flow origins (docs/design.md, Serving memory).

Each pair-method's matches file has an edge index beside it (atlas.store.edgeindex): a lookup of some
features' edges in either direction is a few slices of memory-mapped arrays. Files without one (an atlas
from before edge indexes, until `atlas migrate` writes them) are read from Parquet as before: outgoing rows
by feature_a in the pair's file (sorted by feature_a), incoming rows from its reverse file (rows >= the
method's index floor, by feature_b) or a filtered read of the pair's file. Nothing here holds rows between
requests: the catalog and the SAE rows grow with SAEs and pairs; open indexes and Parquet footers are LRUs
bounded by count (and mapped bytes).
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..methods import METHODS
from .edgeindex import CARRY, COLUMNS, EdgeIndex, Rows, index_name, kind_codes
from .parts import PartReader, arrow_like, catalog
from .schema import files_root

NO_ROWS = Rows(*(np.empty(0, t) for t in (np.int64, np.int64, np.float32, np.int64, np.uint8)))


class EdgeIndexCache:
    """Open edge indexes, least recently used first out, bounded by count and by mapped bytes (a closed
    index unmaps its file once no lookup holds its arrays; the mapped pages are the OS's to evict). Small
    bounds cost little: reopening an index is an open, an mmap and a header parse (tens of microseconds),
    its pages stay in the page cache; but a process's RSS counts the pages it has mapped and touched."""

    def __init__(self, root: Path, max_open: int = 256, max_bytes: int = 384 << 20):
        self.root = root
        self.max_open = max_open
        self.max_bytes = max_bytes
        self._open: collections.OrderedDict[str, EdgeIndex | None] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, rel: str) -> EdgeIndex | None:
        """The index of table file `rel` (None: it has none)."""
        with self._lock:
            if rel in self._open:
                self._open.move_to_end(rel)
                return self._open[rel]
        try:
            index = EdgeIndex(self.root / index_name(rel))
        except FileNotFoundError:
            index = None
        with self._lock:
            if rel not in self._open:
                self._open[rel] = index
                self._bytes += index.nbytes if index is not None else 0
            while len(self._open) > self.max_open or (self._bytes > self.max_bytes and len(self._open) > 1):
                _, old = self._open.popitem(last=False)
                self._bytes -= old.nbytes if old is not None else 0
        return index

    def __len__(self) -> int:
        return len(self._open)


class EdgeCatalog:
    """The matches of one snapshot, looked up by pair-method: in its edge index, or in its table files."""

    def __init__(self, root: str | Path | None, files: dict):
        self.root = Path(root) if root is not None else None
        self.reader = PartReader(self.root) if self.root is not None else None
        self.indexes = EdgeIndexCache(self.root) if self.root is not None else None
        self.catalog = files
        """(table, sae_a, sae_b, method) -> (file, reverse_file) of every table file (parts.catalog)."""
        # (sae_a, sae_b, method) -> (file, reverse_file), and each SAE's pairs from either end
        self.pairs = {(a, b, m): f for (t, a, b, m), f in files.items() if t == "matches"}
        self.out_of: dict[str, list[tuple[str, str]]] = {}
        self.into: dict[str, list[tuple[str, str]]] = {}
        for a, b, m in sorted(self.pairs):
            self.out_of.setdefault(a, []).append((b, m))
            self.into.setdefault(b, []).append((a, m))

    @classmethod
    def of(cls, con) -> "EdgeCatalog":
        """The table files a connection's snapshot names (an atlas without any: no edges)."""
        root = files_root(con)
        return cls(root, catalog(con) if root is not None else {})

    def path(self, rel: str) -> Path:
        return self.root / rel

    def index(self, sae_a: str, sae_b: str, method: str) -> EdgeIndex | None:
        """The edge index of a pair-method (None: no such pair, or a file without one)."""
        f = self.pairs.get((sae_a, sae_b, method))
        return self.indexes.get(f[0]) if f is not None and self.indexes is not None else None

    def lookup(self, sae_a: str, sae_b: str, method: str, features, forward: bool, bar: float | None = None) -> Rows:
        """Edges of pair (sae_a, sae_b, method) whose feature_a (forward) or feature_b (backward) is one of
        `features`. `bar`: the lowest score the caller keeps backward (lets a Parquet read use the reverse
        file; the index holds every row)."""
        f = self.pairs.get((sae_a, sae_b, method))
        if f is None:
            return NO_ROWS
        index = self.index(sae_a, sae_b, method)
        if index is not None:
            return index.forward(features) if forward else index.backward(features)
        return _rows(self._parquet(f, method, features, forward, bar))

    def quantile(self, sae_a: str, sae_b: str, method: str, q: float, con) -> float | None:
        """quantile_cont of a pair-method's assigned scores: from its index, else SQL over its one file."""
        index = self.index(sae_a, sae_b, method)
        if index is not None:
            return index.quantile(q)
        path = str(self.path(self.pairs[(sae_a, sae_b, method)][0]))
        return con.execute("SELECT quantile_cont(score, ?) FROM read_parquet(?, hive_partitioning = false) "
                           "WHERE assigned", [q, path]).fetchall()[0][0]

    def _parquet(self, f: tuple[str, str | None], method: str, features, forward: bool, bar: float | None) -> pa.Table:
        """Rows of a pair's table file without an edge index whose feature_a (forward) or feature_b is one of
        `features`. Backward, from the reverse file when it holds every row the caller keeps (`bar` at least the
        method's index floor), else a filtered read of the pair's file (distance methods, or a lower bar)."""
        if forward:
            return self.reader.rows(f[0], "feature_a", features, COLUMNS)
        floor = METHODS[method].index_floor if method in METHODS else None
        if f[1] is not None and floor is not None and bar is not None and bar >= floor:
            return self.reader.rows(f[1], "feature_b", features, COLUMNS)
        return _scan(self.path(f[0]), "feature_b", features)

    def outgoing(self, sae: str, feature: int, top: int) -> list[tuple]:
        """(method, sae_b, feature_b, score, rank, assigned, 'out') of a feature's candidates of rank <= top."""
        out = []
        for other, method in self.out_of.get(sae, []):
            r = self.lookup(sae, other, method, [feature], True)
            r = r.take(r.rank <= top)
            out += [(method, other, fb, s, rank, kind == CARRY, "out") for fb, s, rank, kind in zip(
                r.feature_b.tolist(), r.score.tolist(), r.rank.tolist(), r.kind.tolist())]
        return out

    def incoming(self, sae: str, feature: int) -> list[tuple]:
        """(method, sae_a, feature_a, score, rank, assigned, 'in') of the matches into a feature: rows >= the
        index floor for similarity methods, every row for distances."""
        out = []
        for other, method in self.into.get(sae, []):
            floor = METHODS[method].index_floor if method in METHODS else None
            r = self.lookup(other, sae, method, [feature], False, floor)
            if floor is not None:
                r = r.take(r.score.astype(np.float64) >= floor)
            out += [(method, other, fa, s, rank, kind == CARRY, "in") for fa, s, rank, kind in zip(
                r.feature_a.tolist(), r.score.tolist(), r.rank.tolist(), r.kind.tolist())]
        return out

    def files_of(self, table: str, pairs) -> list[str]:
        """Absolute paths of the files of `pairs` ((sae_a, sae_b, method) triples) that exist. SQL reads them with
        read_parquet(..., hive_partitioning = false): the ids in the file, not the (URL-quoted) folder names."""
        return [str(self.path(self.pairs[p][0])) for p in pairs if p in self.pairs] if table == "matches" else []


def _scan(path: Path, column: str, values) -> pa.Table:
    """Rows of one file whose `column` (not its sort column) is one of `values`: read that column, then only
    the row groups holding a hit (3x faster than a filtered read of every column)."""
    values = pa.array(np.unique(np.asarray(list(values), np.int64)), pa.int32())
    pf = pq.ParquetFile(path)
    hits = np.nonzero(pc.is_in(pf.read(columns=[column], use_threads=False)[column], values)
                      .to_numpy(zero_copy_only=False))[0]
    meta = pf.metadata
    starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
    groups = np.unique(np.searchsorted(starts, hits, side="right") - 1).tolist()
    if not groups:
        return arrow_like(meta, COLUMNS)
    t = pf.read_row_groups(groups, columns=COLUMNS, use_threads=False)
    return t.filter(pc.is_in(t[column], values))


def _rows(t: pa.Table) -> Rows:
    """Parquet rows (edgeindex.COLUMNS) as index Rows."""
    rank = t["rank"].to_numpy().astype(np.int64)
    kind = kind_codes(t["assigned"].to_numpy(zero_copy_only=False), rank, t["rank_b"].fill_null(0).to_numpy())
    return Rows(t["feature_a"].to_numpy().astype(np.int64), t["feature_b"].to_numpy().astype(np.int64),
                t["score"].to_numpy(), rank, kind)
