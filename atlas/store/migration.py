"""Upgrading a job's working file (docs/design.md, Tables: schema versions): the SQL steps of
schema.MIGRATIONS, and version 5's job step, which moves the big tables of a version-4 atlas out into table
files (one ordered pass per table, a file per pair) and then rewrites the file without the freed blocks.
"""

from __future__ import annotations

import os

import duckdb
from tqdm.auto import tqdm

from . import parts, schema


def upgrade(writer) -> None:
    """Create or upgrade the schema of the writer's working file; from version 4 on, move the tables out."""
    moved = []
    schema.create(writer.con, writer.atlas.tables_dir, lambda con: moved.append(move_tables_out(writer, con)))
    if moved:
        _compact(writer)


def move_tables_out(writer, con) -> None:
    """Schema 4 -> 5: each pair's rows of matches, correlations and compositions become a table file, read in
    one ordered pass per table, then the tables go."""
    present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                         "current_database() AND schema_name = 'main'").fetchall()}
    for table, spec in parts.PART_TABLES.items():
        if table not in present:
            continue
        keys = ", ".join(k for k in ("sae_a", "sae_b", "method") if k in spec.keys)
        # one ordered read, cut into each pair's run of rows by the counts of the same order
        data = con.sql(f"SELECT * FROM {table} ORDER BY {keys}").to_arrow_table()
        runs = con.execute(f"SELECT {keys}, count(*) FROM {table} GROUP BY ALL ORDER BY {keys}").fetchall()
        start = 0
        for *key, n in tqdm(runs, desc=f"moving {table} into table files", unit="pair", disable=len(runs) < 2):
            rows, start = data.slice(start, n), start + n
            a, b, method = key if len(key) == 3 else (*key, "")
            writer.put_part(table, a, b, method, rows, rows["run_id"][0].as_py())
        con.execute(f"DROP TABLE {table}")


def _compact(writer) -> None:
    """After moving the tables out: rewrite the working file without their free blocks (DuckDB does not
    shrink a file), so the published catalog is small."""
    writer.con.execute("CHECKPOINT")
    writer.con.close()
    fresh = writer.work.with_name(writer.work.stem + "-compact.duckdb")
    fresh.unlink(missing_ok=True)
    con = duckdb.connect(str(fresh), config=schema.STORAGE)
    con.execute(f"ATTACH {schema.literal(str(writer.work))} AS old (READ_ONLY)")
    con.execute(f"COPY FROM DATABASE old TO {schema.literal(fresh.stem)}".replace("'", '"'))
    con.execute("DETACH old")
    con.close()
    os.replace(fresh, writer.work)
    writer.con = duckdb.connect(str(writer.work), config=schema.STORAGE)
    schema.create(writer.con, writer.atlas.tables_dir)
