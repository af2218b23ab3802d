"""Table files: the atlas's big per-pair tables as immutable Parquet files the catalog points to
(docs/storage.md).

`matches`, `correlations` and `compositions` grow with pairs × features, so they do not live inside the
DuckDB file: each pair (and method) gets one Parquet file under atlas.files/tables/<table>/, sorted so
one feature's rows are contiguous and row groups small enough that a point lookup reads one of them.
The `parts` table of the DuckDB file lists them; views named like the tables read them (schema.py). A
job writes new files and publishes by swapping the small DuckDB file, so publishing costs the same at
any atlas size; files no snapshot names any more are collected after a grace period (collection.py).

Matches of similarity methods also get a reverse file: the rows with score >= the method's index floor,
sorted by feature_b (SQL and older readers use it). Every matches file also gets its edge index
(edgeindex.py, <uuid>.idx beside <uuid>.parquet; the writer adds it), which the server's lineage and cards read.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import uuid
from urllib.parse import quote
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atlas.methods import METHODS

from .schema import PART_DDL

ROW_GROUP = 4096
"""Rows per row group: at k = 16 candidates, 256 features; a point lookup decodes about this many rows."""


@dataclass(frozen=True)
class Part:
    keys: tuple[str, ...]
    """Columns constant within one file (its catalog key)."""
    sort: tuple[str, ...]
    """Sort order within the file: lookups by the first column read one row group."""


PART_TABLES: dict[str, Part] = {
    "matches": Part(("sae_a", "sae_b", "method"), ("feature_a", "rank")),
    "correlations": Part(("sae_a", "sae_b"), ("feature_a", "feature_b")),
    "compositions": Part(("sae_a", "sae_b"), ("feature_b",)),
}


@dataclass(frozen=True)
class PartFile:
    file: str
    """Path relative to atlas.files/tables/."""
    rows: int
    bytes: int


@functools.cache
def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of a table file, from the schema's own DDL (one definition of the columns)."""
    con = duckdb.connect(":memory:")
    con.execute(PART_DDL.replace("empty.", ""))
    return con.sql(f"SELECT * FROM {table} LIMIT 0").to_arrow_table().schema


def conform(table: str, data: pa.Table, **constants) -> pa.Table:
    """`data` with the table's columns in schema order and types, constant columns (e.g. run_id) added,
    sorted by the table's sort order."""
    schema = arrow_schema(table)
    for name, value in constants.items():
        if name not in data.column_names:
            data = data.append_column(name, pa.repeat(pa.scalar(value, schema.field(name).type), data.num_rows))
    missing = [n for n in schema.names if n not in data.column_names]
    if missing:
        raise ValueError(f"{table} rows lack column {missing[0]!r}")
    data = data.select(schema.names).cast(schema)
    return data.sort_by([(c, "ascending") for c in PART_TABLES[table].sort]) if data.num_rows else data


def check_keys(table: str, data: pa.Table, key: dict) -> None:
    """Every row of a table file belongs to the pair (and method) its catalog row names."""
    for col in PART_TABLES[table].keys:
        values = pc.unique(data[col]).to_pylist() if data.num_rows else []
        if values and values != [key[col]]:
            raise ValueError(f"{table} rows for {key['sae_a']} -> {key['sae_b']} have {col} "
                             f"{values[:3]}, not {key[col]!r}")


def reverse_rows(method: str, data: pa.Table) -> pa.Table | None:
    """The reverse file's rows of a conformed matches table: score >= the method's index floor, by feature_b.
    None for distance methods (no floor: their lineage reads the forward files through SQL)."""
    floor = METHODS[method].index_floor if method in METHODS else None
    if floor is None:
        return None
    kept = data.filter(pc.greater_equal(data["score"], pa.scalar(floor, pa.float32())))
    return kept.sort_by([("feature_b", "ascending"), ("feature_a", "ascending")])


def _encodings(schema: pa.Schema) -> dict:
    """Parquet encodings that suit these columns (about 40% smaller than pyarrow's defaults, docs/storage.md):
    dictionaries for the strings (constant or few per file), byte-stream-split floats, delta-packed integers."""
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    encoding = {f.name: "BYTE_STREAM_SPLIT" if pa.types.is_floating(f.type) else "DELTA_BINARY_PACKED"
                for f in schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)}
    return dict(use_dictionary=strings, column_encoding=encoding)


def write_atomic(path: Path, write) -> int:
    """Write a file with `write(tmp)` under a temporary name, sync it, rename it into place (the temporary goes
    on any failure), so nobody, killed or reading, ever sees half a file; its size in bytes."""
    path = Path(path)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size


def write_file(path: Path, data: pa.Table) -> int:
    """Write a table file (write_atomic); its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: pq.write_table(data, tmp, row_group_size=ROW_GROUP, compression="zstd",
                                                        write_statistics=True, **_encodings(data.schema)))


def new_name(table: str, key: dict[str, str], suffix: str = "") -> str:
    """A fresh file name relative to the tables folder, in Hive-style folders of its key columns
    (<table>/sae_a=<id>/sae_b=<id>[/method=<m>]/<uuid><suffix>.parquet), so SQL filters on them skip
    other pairs' files without opening them."""
    folders = "/".join(f"{c}={quote(key[c], safe='')}" for c in PART_TABLES[table].keys)
    return f"{table}/{folders}/{uuid.uuid4().hex}{suffix}.parquet"


def reverse_name(rel: str) -> str:
    """The reverse file's name beside a table file's: <uuid>.by_b.parquet."""
    return rel.removesuffix(".parquet") + ".by_b.parquet"


def write_part(root: Path, table: str, data: pa.Table, key: dict[str, str]) -> tuple[PartFile, PartFile | None]:
    """Write one pair's rows (already conformed) as a table file, and of matches the reverse file."""
    rel = new_name(table, key)
    main = PartFile(rel, data.num_rows, write_file(root / rel, data))
    reverse = None
    if table == "matches" and data.num_rows:
        rows = reverse_rows(data["method"][0].as_py(), data)
        if rows is not None:
            rrel = reverse_name(rel)
            reverse = PartFile(rrel, rows.num_rows, write_file(root / rrel, rows))
    return main, reverse


class PartReader:
    """Point lookups in table files: the row groups whose min/max statistics can hold the wanted values,
    read and filtered. File footers are cached (a bounded LRU), so memory does not grow with the atlas. Keep
    it small: a parsed footer of 64 row groups holds megabytes once allocated (512 of them took a server
    process from 0.4 to 1.7 GB on the 300M-row bench atlas) and a larger cache gave no speed there."""

    def __init__(self, root: Path, max_open: int = 64):
        self.root = Path(root)
        self.max_open = max_open
        self._meta: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _footer(self, rel: str, column: str):
        key = f"{rel}\0{column}"
        with self._lock:
            hit = self._meta.get(key)
            if hit is not None:
                self._meta.move_to_end(key)
                return hit
        meta = pq.read_metadata(self.root / rel)
        col = meta.schema.to_arrow_schema().get_field_index(column)
        stats = [meta.row_group(i).column(col).statistics for i in range(meta.num_row_groups)]
        unknown = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)  # no statistics: any value may be there
        lo, hi = np.array([(st.min, st.max) if st is not None and st.has_min_max else unknown for st in stats],
                          np.int64).reshape(-1, 2).T
        hit = (meta, lo, hi)
        with self._lock:
            self._meta[key] = hit
            while len(self._meta) > self.max_open:
                self._meta.popitem(last=False)
        return hit

    def rows(self, rel: str, column: str, values, columns: list[str] | None = None) -> pa.Table:
        """Rows of file `rel` whose integer `column` is one of `values`."""
        values = np.unique(np.asarray(list(values), dtype=np.int64))
        meta, lo, hi = self._footer(rel, column)
        if not len(values) or not len(lo):
            return arrow_like(meta, columns)
        # row group i can hold a value v when lo[i] <= v <= hi[i]
        first = np.searchsorted(values, lo, side="left")
        groups = np.nonzero((first < len(values)) & (values[np.minimum(first, len(values) - 1)] <= hi))[0]
        if not len(groups):
            return arrow_like(meta, columns)
        # one request reads a row group or two: threads cost more than they give (use_threads=False: ~40% faster)
        t = pq.ParquetFile(self.root / rel, metadata=meta).read_row_groups(groups.tolist(), columns=columns,
                                                                          use_threads=False)
        return t.filter(pc.is_in(t[column], pa.array(values, t[column].type)))


def arrow_like(meta, columns) -> pa.Table:
    schema = meta.schema.to_arrow_schema()
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    return schema.empty_table()


def catalog(con) -> dict[tuple[str, str, str, str], tuple[str, str | None]]:
    """(table, sae_a, sae_b, method) -> (file, reverse_file) of every table file of a snapshot."""
    rows = con.execute("SELECT table_name, sae_a, sae_b, method, file, reverse_file FROM parts").fetchall()
    return {(t, a, b, m): (f, r) for t, a, b, m, f, r in rows}


def size_of(path: Path) -> tuple[int, int]:
    """(rows, bytes) of a Parquet file, from its footer."""
    return pq.read_metadata(path).num_rows, Path(path).stat().st_size
