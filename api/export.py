"""Whole tables as a Parquet stream: written batch by batch into a small buffer drained after each batch, so
an export holds about one batch whatever the table's size (docs/design.md, Serving memory).

Table-file tables (matches, correlations, compositions) are copied file by file, batch by batch, from the
files the snapshot's catalog names; tables inside DuckDB are read through a cursor's record batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from atlas.store.leases import Lease
from atlas.store.parts import PART_TABLES, arrow_schema

from .paths import RETRY_S, missing
from .sqlpool import Unavailable

BATCH_ROWS = 65_536
"""Rows per batch read and per row group written."""


class _Sink:
    """A write-only file that keeps what was written until drained."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.pos = 0
        self.closed = False

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def parquet_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Iterator[bytes]:
    """The bytes of one Parquet file holding `batches`, yielded as each batch is written (one row group each)."""
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="zstd")
    try:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
                yield sink.drain()
    finally:
        writer.close()
    yield sink.drain()


def table_batches(snap, table: str, atlas_dir: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """(schema, record batches) of a whole table of the snapshot, never more than a batch in memory.

    The table files stay leased (atlas/store/leases.py) until the stream ends, so a job that
    publishes meanwhile cannot collect a file half-way through an export (a lease of a server that died, or
    of a stream never started, goes with its process or its garbage-collected file handle)."""
    if table in PART_TABLES:
        files = snap.edges
        names = sorted(f for (t, *_), (f, _) in files.catalog.items() if t == table)
        gone = next((rel for rel in names if not files.path(rel).is_file()), None)
        if gone is not None:  # checked before the 200 goes out: a stream cannot turn into an error half-way
            raise Unavailable(missing(str(files.path(gone))), RETRY_S)  # made relative where errors are sent
        schema = arrow_schema(table)
        lease = Lease(atlas_dir)
        lease.hold(set(names))

        def from_files():
            try:
                for rel in names:
                    yield from pq.ParquetFile(files.path(rel)).iter_batches(batch_size=BATCH_ROWS)
            finally:
                lease.release()
        return schema, from_files()
    # an export is bounded in memory, not time: its cursor is not stopped at the request's time limit
    cur = snap.con.cursor()
    reader = cur.sql(f"SELECT * FROM {table}").to_arrow_reader(BATCH_ROWS)

    def from_cursor():
        try:
            yield from reader
        finally:
            cur.close()
    return reader.schema, from_cursor()
