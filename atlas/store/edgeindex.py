"""Edge index: one pair-method's matches as fixed-width arrays beside its table file, read memory-mapped
(docs/storage.md, Edge index).

Lineage and the feature card ask "the edges of these features of SAE a into SAE b" (or into a from b).
Answering that from Parquet means footers, row groups and decompression per lookup; answering it from
this file is two slices of a CSR pointer array and a gather, with pages the OS maps and evicts.

The file is `<uuid>.idx` beside the pair's `<uuid>.parquet` (index_name): the catalog names it through its
table file, so snapshots, grace periods and sweeps treat the two as one. It is immutable like the table
file and holds every row of it (any bar, any edge mode, distance methods too):

    b"ATLASEI1" | uint64 header length | JSON header | arrays, each at a 64-byte boundary
    fwd_ptr[n_a + 1]  rows of feature_a = f are fwd_ptr[f]:fwd_ptr[f + 1], in (feature_a, rank) order
    feature_b, score, rank, kind     per row, in that order (kind: a code, the edge_kind macro's rule)
    bwd_ptr[n_b + 1], bwd_row        rows of feature_b = f are bwd_row[bwd_ptr[f]:bwd_ptr[f + 1]], by feature_a
    assigned_scores                  the assigned rows' scores, sorted (a per-pair quantile is one lookup)

Integer widths are the narrowest that hold the pair's values (the header names each dtype). The header's "kinds" name
the kind codes (format 2; format 1 files, written before, used FORMAT_1_KINDS): a file written when EDGE_KIND listed
other kinds, or in another order, is read by its own table, never misread by position.
"""

from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .parts import write_atomic
from .schema import EDGE_KIND

MAGIC = b"ATLASEI1"
SUFFIX = ".idx"
FORMAT = 2
COLUMNS = ["feature_a", "feature_b", "score", "rank", "assigned", "rank_b"]
KINDS = np.array([kind for kind, _ in EDGE_KIND] + ["candidate"])
"""Edge kinds by code (schema.EDGE_KIND, then candidate): the table every file written now names in its header."""
CODE = {str(kind): code for code, kind in enumerate(KINDS)}
CARRY, CANDIDATE = CODE["carry"], CODE["candidate"]
FORMAT_1_KINDS = ("carry", "split", "merge", "candidate")
"""The kind codes of format-1 files, whose header has no kind table."""
_ALIGN = 64


def kind_codes(assigned: np.ndarray, rank: np.ndarray, rank_b: np.ndarray) -> np.ndarray:
    """KINDS code of each edge by schema.EDGE_KIND (`rank`: rank_a)."""
    columns = {"assigned": np.asarray(assigned), "rank_a": np.asarray(rank), "rank_b": np.asarray(rank_b)}
    return np.select([columns[c] == 1 for _, c in EDGE_KIND], [CODE[k] for k, _ in EDGE_KIND], CANDIDATE).astype(np.uint8)


def index_name(rel: str) -> str:
    """The index file of a table file: <uuid>.parquet -> <uuid>.idx (a name, whether or not it exists)."""
    return rel.removesuffix(".parquet") + SUFFIX


def _narrow(values: np.ndarray, kinds: tuple) -> np.ndarray:
    """`values` in the first of `kinds` (integer dtypes) that holds them all."""
    hi = int(values.max()) if len(values) else 0
    lo = int(values.min()) if len(values) else 0
    dtype = next(k for k in kinds if np.iinfo(k).min <= lo and hi <= np.iinfo(k).max)
    return values.astype(dtype)


def build(data: pa.Table) -> dict[str, np.ndarray]:
    """The index arrays of one pair-method's matches rows (any order; at least COLUMNS)."""
    fa = data["feature_a"].to_numpy().astype(np.int64)
    fb = data["feature_b"].to_numpy().astype(np.int64)
    score = data["score"].to_numpy().astype(np.float32)
    rank = data["rank"].to_numpy().astype(np.int64)
    assigned = data["assigned"].to_numpy(zero_copy_only=False).astype(bool)
    rank_b = data["rank_b"].fill_null(0).to_numpy().astype(np.int64)
    order = np.lexsort((rank, fa))
    fa, fb, score, rank, assigned, rank_b = (x[order] for x in (fa, fb, score, rank, assigned, rank_b))
    n_a = int(fa.max()) + 1 if len(fa) else 0
    n_b = int(fb.max()) + 1 if len(fb) else 0
    ptrs = (np.int32, np.int64)
    back = np.lexsort((fa, fb))
    return {
        "fwd_ptr": _narrow(np.concatenate([[0], np.cumsum(np.bincount(fa, minlength=n_a))]), ptrs),
        "feature_b": _narrow(fb, (np.uint16, np.int32)),
        "score": score,
        "rank": _narrow(rank, (np.uint8, np.int16)),
        "kind": kind_codes(assigned, rank, rank_b),
        "bwd_ptr": _narrow(np.concatenate([[0], np.cumsum(np.bincount(fb, minlength=n_b))]), ptrs),
        "bwd_row": _narrow(back, (np.uint16, np.uint32, np.int64)),
        "assigned_scores": np.sort(score[assigned]),
    }


def header_of(rows: int, layout: dict) -> dict:
    """The JSON header of an index file: its format, rows, kind table and array layout."""
    return {"format": FORMAT, "rows": rows, "kinds": KINDS.tolist(), "arrays": layout}


def write(path: Path, data: pa.Table) -> int:
    """Write the index of `data` at `path` (parts.write_atomic, as table files); its size."""
    arrays = build(data)
    layout, offset = {}, 0
    for name, a in arrays.items():
        layout[name] = {"dtype": a.dtype.str, "length": len(a), "offset": offset}
        offset += -(-a.nbytes // _ALIGN) * _ALIGN
    header = json.dumps(header_of(data.num_rows, layout)).encode()
    start = -(-(len(MAGIC) + 8 + len(header)) // _ALIGN) * _ALIGN

    def write_to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(MAGIC + np.uint64(len(header)).tobytes() + header)
            for name, a in arrays.items():
                f.seek(start + layout[name]["offset"])
                f.write(np.ascontiguousarray(a).tobytes())
            f.truncate(start + offset)
    return write_atomic(path, write_to)


def write_for(table_file: Path) -> int:
    """Write the index beside a matches table file, from the file's rows; its size."""
    table_file = Path(table_file)
    return write(table_file.with_name(index_name(table_file.name)), pq.read_table(table_file, columns=COLUMNS))


@dataclass
class Rows:
    """Edges found by a lookup, as parallel arrays (kind: KINDS codes)."""
    feature_a: np.ndarray
    feature_b: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def take(self, keep) -> "Rows":
        return Rows(*(x[keep] for x in (self.feature_a, self.feature_b, self.score, self.rank, self.kind)))


class EdgeIndex:
    """One index file, memory-mapped read-only: lookups copy out just the rows asked for."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:  # the mapping outlives the file object
            raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if raw[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not an edge index file")
        n = int.from_bytes(raw[len(MAGIC):len(MAGIC) + 8], "little")
        header = json.loads(raw[len(MAGIC) + 8:len(MAGIC) + 8 + n])
        start = -(-(len(MAGIC) + 8 + n) // _ALIGN) * _ALIGN
        self.nbytes = len(raw)
        self.rows = header["rows"]
        self.recode = _recode(header, path)
        # plain arrays over the mapping (np.memmap's subclass costs microseconds per slice); the mapping is
        # unmapped when the last of them goes
        self.arrays: dict[str, np.ndarray] = {
            name: np.frombuffer(raw, np.dtype(spec["dtype"]), spec["length"], start + spec["offset"])
            for name, spec in header["arrays"].items()}

    def forward(self, features) -> Rows:
        """Rows whose feature_a is one of `features`, by (feature_a, rank)."""
        f, rows = _gather(self.arrays["fwd_ptr"], features)
        return self._rows(rows, feature_a=f)

    def backward(self, features) -> Rows:
        """Rows whose feature_b is one of `features`, by (feature_b, feature_a)."""
        f, at = _gather(self.arrays["bwd_ptr"], features)
        rows = self.arrays["bwd_row"][at].astype(np.int64)
        fa = np.searchsorted(self.arrays["fwd_ptr"], rows, side="right") - 1
        return self._rows(rows, feature_a=fa)

    def _rows(self, rows: np.ndarray | slice, feature_a: np.ndarray) -> Rows:
        a = self.arrays
        kind = a["kind"][rows] if self.recode is None else self.recode[a["kind"][rows]]
        return Rows(feature_a.astype(np.int64), a["feature_b"][rows].astype(np.int64), a["score"][rows],
                    a["rank"][rows].astype(np.int64), kind)

    def quantile(self, q: float) -> float | None:
        """DuckDB's quantile_cont of the assigned scores (None: nothing assigned): the same interpolation, in
        double, rounded to the column's FLOAT, so a score at the bar passes or fails as it does in SQL."""
        s = self.arrays["assigned_scores"]
        if not len(s):
            return None
        rn = q * (len(s) - 1)
        lo, hi = int(np.floor(rn)), int(np.ceil(rn))
        a, b = float(s[lo]), float(s[hi])
        return a if lo == hi else float(np.float32(a + (b - a) * (rn - lo)))


def _recode(header: dict, path: Path) -> np.ndarray | None:
    """file code -> this code's code of the same kind (None: the file's table is this code's)."""
    if header.get("format", 1) > FORMAT:
        raise ValueError(f"{path}: edge index format {header['format']} is newer than this code's {FORMAT}: upgrade "
                         f"feature-atlas")
    kinds = list(header.get("kinds", FORMAT_1_KINDS))
    if kinds == KINDS.tolist():
        return None
    unknown = [k for k in kinds if k not in CODE]
    if unknown:
        raise ValueError(f"{path}: edge index names edge kind {unknown[0]!r}, which this code does not know: upgrade "
                         f"feature-atlas")
    return np.array([CODE[k] for k in kinds], np.uint8)


def _gather(ptr: np.ndarray, features) -> tuple[np.ndarray, np.ndarray | slice]:
    """(the feature of each position, positions) of the CSR runs of `features` (unknown features: none)."""
    if len(features) == 1:  # the common case (a card; a lineage step from one node): one slice, no copies
        f = int(next(iter(features)))
        if not 0 <= f < len(ptr) - 1:
            return np.empty(0, np.int64), slice(0, 0)
        lo, hi = int(ptr[f]), int(ptr[f + 1])
        return np.full(hi - lo, f, np.int64), slice(lo, hi)
    f = np.unique(np.asarray(features, dtype=np.int64))
    f = f[(f >= 0) & (f < len(ptr) - 1)]
    lo, hi = ptr[f].astype(np.int64), ptr[f + 1].astype(np.int64)
    n = hi - lo
    total = int(n.sum())
    if not total:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.arange(total) + np.repeat(lo - (np.cumsum(n) - n), n)
    return np.repeat(f, n), pos
