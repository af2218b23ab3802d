"""One SQL answer as the bytes its client gets (JSON, CSV, Arrow, Parquet), made in the SQL worker: the server
holds the encoded answer, never the rows as Python objects (docs/design.md, Serving memory), and the paths the
answer shows are relative to the atlas's folder (docs/design.md, Read-only SQL).
"""

from __future__ import annotations

import csv
import io

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
from litestar.serialization import encode_json

from .structs import SQLResult

MEDIA = {"json": "application/json", "csv": "text/csv", "arrow": "application/vnd.apache.arrow.stream",
         "parquet": "application/vnd.apache.parquet"}


def encode(fmt: str, names: list[str], rows: list, truncated: bool, limit: int, elapsed_s: float) -> bytes:
    """The response body of `rows` in format `fmt`."""
    if fmt == "json":
        return encode_json(SQLResult(columns=names, rows=[list(r) for r in rows], truncated=truncated, limit=limit,
                                     elapsed_ms=elapsed_s * 1000))  # Litestar's encoders, as its responses use
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(names)
        w.writerows(rows)
        return buf.getvalue().encode()
    table = pa.Table.from_pydict({n: [r[i] for r in rows] for i, n in enumerate(names)})
    out = io.BytesIO()
    if fmt == "arrow":
        with pa.ipc.new_stream(out, table.schema) as w:
            w.write_table(table)
    else:
        pq.write_table(table, out)
    return out.getvalue()


WARM = ["SELECT now(), current_date, INTERVAL 1 DAY, 1.5::DECIMAL(4, 2), uuid(), '{}'::JSON, 'x'::BLOB, [1], {'a': 1},"
        " MAP {'k': 1}, 1::HUGEINT, '12:00'::TIME, now()::TIMESTAMP, 'a'::ENUM('a'), 1::UBIGINT, union_value(a := 1)"]
"""Values of every kind DuckDB hands to Python: converting them once imports what the conversion imports."""


def warm(con) -> None:
    """Load now whatever answering loads lazily (DuckDB's Python conversions, the time zone, pyarrow's pandas
    check), before the worker's reads are confined to the table files."""
    for sql in WARM:
        cur = con.cursor()
        names = [d[0] for d in cur.execute(sql).description]
        rows = cur.fetchall()
        for fmt in MEDIA:
            try:
                encode(fmt, names, rows, False, 1, 0.0)
            except (pa.ArrowException, TypeError, ValueError):  # a type Arrow cannot build from Python: loaded anyway
                pass
        cur.close()
