"""The write API: a job's read-write connection on a private working copy of the atlas, published by an
atomic rename (docs/design.md, Snapshots). Jobs call its methods, not SQL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from . import collection, edgeindex, migration, parts, schema


class Writer:
    """A read-write connection on a working copy of the atlas, with publish()."""

    def __init__(self, atlas):
        self.atlas = atlas
        self.work = atlas.dir / f"working-{os.getpid()}.duckdb"
        for stale in [*atlas.dir.glob("working-*"), atlas.path.with_name(atlas.path.name + ".publishing")]:
            stale.unlink(missing_ok=True)  # left by a killed job: we hold the lock now
        if atlas.path.exists():
            shutil.copyfile(atlas.path, self.work)
        self.con = duckdb.connect(str(self.work), config=schema.STORAGE)
        self.upgraded_from = schema.version_of(self.con)
        migration.upgrade(self)
        # Runs left 'running' in a published snapshot belong to a job that was killed: we hold the lock.
        self.con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        collection.collect_dropped(atlas, self.con)
        collection.sweep(atlas, *collection.named_files(self.con))
        self.published_at = time.monotonic()

    def build_edge_indexes(self) -> int:
        """Write the edge index of each matches file that lacks one (an atlas from before edge indexes; `atlas
        migrate`); how many. Readers serve such files from Parquet meanwhile (atlas.store.edges)."""
        missing = [r[0] for r in self.con.execute("SELECT file FROM parts WHERE table_name = 'matches'").fetchall()
                   if not (self.atlas.tables_dir / edgeindex.index_name(r[0])).exists()]
        for rel in tqdm(missing, desc="edge indexes", unit="file", disable=len(missing) < 2):
            edgeindex.write_for(self.atlas.tables_dir / rel)
        return len(missing)

    def publish(self, final: bool = False) -> None:
        """Make everything committed so far visible to readers, atomically. Only the small DuckDB file is
        copied: table files are already in place, and the views are rewritten to name exactly the catalog's."""
        schema.part_views(self.con, self.atlas.tables_dir)
        self.con.execute("UPDATE dropped_parts SET dropped_at = current_timestamp::TIMESTAMP WHERE dropped_at IS NULL")
        self.con.execute("CHECKPOINT")
        tmp = self.atlas.path.with_name(self.atlas.path.name + ".publishing")
        if final:
            self.con.close()
            self.con = None
            os.replace(self.work, tmp)
        else:
            shutil.copyfile(self.work, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.atlas.path)
        self.published_at = time.monotonic()

    def publish_every(self, seconds: float) -> None:
        if time.monotonic() - self.published_at >= seconds:
            self.publish()

    def discard(self) -> None:
        if self.con is not None:
            with contextlib.suppress(Exception):
                self.con.close()
            self.con = None
        for p in (self.work, self.work.with_name(self.work.name + ".wal"),
                  self.work.with_name(self.work.stem + "-compact.duckdb")):  # migration's compacted copy
            p.unlink(missing_ok=True)

    @contextlib.contextmanager
    def transaction(self):
        """One unit of work: all of it committed, or none. Nested calls join the outer transaction."""
        if getattr(self, "_in_transaction", False):
            yield self.con
            return
        self.con.execute("BEGIN TRANSACTION")
        self._in_transaction = True
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False
        self.con.execute("COMMIT")

    # The write API: jobs call these, not SQL. Column lists come from the schema itself.

    def columns(self, table: str) -> list[str]:
        """Column names of `table`, in schema order."""
        cache = self.__dict__.setdefault("_columns", {})
        if table not in cache:
            cache[table] = [r[0] for r in self.con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database() "
                "ORDER BY column_index", [table]).fetchall()]
            if not cache[table]:
                raise ValueError(f"no table {table!r} in the atlas schema")
        return cache[table]

    def _checked(self, table: str, names) -> list[str]:
        unknown = [n for n in names if n not in self.columns(table)]
        if unknown:
            raise ValueError(f"{table} has no column {unknown[0]!r}; its columns: {', '.join(self.columns(table))}")
        return list(names)

    def insert_rows(self, table: str, rows: list[dict], replace: bool = False) -> None:
        """Insert rows given as dicts (keys must be columns of `table`; insert_arrow)."""
        if not rows:
            return
        self.insert_arrow(table, pa.Table.from_pylist(rows), replace)

    def per_sae_tables(self) -> list[tuple[str, str, str]]:
        """(table, column, column) of every table other than saes that refers to SAEs: sae_id, or sae_a/sae_b."""
        rows = self.con.execute(
            "SELECT table_name, list(column_name) FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main' AND table_name NOT IN ('saes', 'parts') AND column_name IN ('sae_id', 'sae_a', "
            "'sae_b') AND table_name IN (SELECT table_name FROM duckdb_tables() WHERE database_name = "
            "current_database() AND schema_name = 'main') "  # not views: table files go through drop_parts
            "GROUP BY 1 ORDER BY 1").fetchall()
        return [(t, "sae_id", "sae_id") if "sae_id" in cols else (t, "sae_a", "sae_b") for t, cols in rows]

    def delete_sae(self, sae_id: str) -> None:
        """An SAE and everything computed from it (matches, stats, correlations, examples, ...)."""
        with self.transaction() as con:
            for table, col_a, col_b in self.per_sae_tables():
                con.execute(f"DELETE FROM {table} WHERE {col_a} = ? OR {col_b} = ?", [sae_id, sae_id])
            self.drop_parts("sae_a = ? OR sae_b = ?", [sae_id, sae_id])
            con.execute("DELETE FROM saes WHERE sae_id = ?", [sae_id])

    def put_sae(self, row: dict, features, replace: bool = False) -> None:
        """Store an SAE's row and its features (Arrow); with replace, first drop what the old weights gave."""
        with self.transaction():
            if replace:
                self.delete_sae(row["sae_id"])
            self.insert_rows("saes", [row])
            self.insert_arrow("features", features)

    def update_sae(self, sae_id: str, values: dict, only_missing: bool = False) -> None:
        """Set columns of one SAE's row (only where NULL with only_missing)."""
        self._update("saes", dict(sae_id=sae_id), values, only_missing)

    def update_features(self, sae_id: str, values) -> int:
        """Set columns of one SAE's features from an Arrow table (`feature` and the columns to set), keeping the
        stored value where the new one is NULL; how many features it found."""
        names = self._checked("features", [n for n in values.column_names if n != "feature"])
        self.con.register("_incoming", values)
        try:
            n = self.con.execute(f"UPDATE features f SET {', '.join(f'{c} = coalesce(n.{c}, f.{c})' for c in names)} "
                                 f"FROM _incoming n WHERE f.sae_id = ? AND f.feature = n.feature", [sae_id]).fetchone()[0]
        finally:
            self.con.unregister("_incoming")
        return int(n)

    def replace_examples(self, sae_id: str, dataset: str, rows: list[dict]) -> None:
        """One SAE's examples from `dataset` (dicts of examples columns), replacing earlier ones."""
        self._replace("examples", dict(sae_id=sae_id, dataset=dataset), rows)

    def finish_run(self, run_id: str, finished_at, status: str = "ok") -> None:
        self.con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, finished_at, run_id])

    def replace_pair(self, sae_a: str, sae_b: str, method: str, matches, stats: dict, run_id: str) -> None:
        """One pair-method's matches (Arrow, or a task's finished shard: put_part) and stats row, replacing
        earlier ones."""
        with self.transaction():
            self.put_part("matches", sae_a, sae_b, method, matches, run_id)
            self._replace_stats(sae_a, sae_b, method, stats, run_id)

    def _replace_stats(self, sae_a: str, sae_b: str, method: str, stats: dict, run_id: str) -> None:
        key = dict(sae_a=sae_a, sae_b=sae_b, method=method)
        self._replace("pair_stats", key, [dict(stats, **key, run_id=run_id)])

    def _update(self, table: str, key: dict, values: dict, only_missing: bool = False) -> None:
        """Set columns of `table`'s rows of `key` (column -> value); with only_missing, only where NULL."""
        names = self._checked(table, values)
        sets = ", ".join(f"{n} = coalesce({n}, ?)" if only_missing else f"{n} = ?" for n in names)
        self.con.execute(f"UPDATE {table} SET {sets} WHERE {_where(key)}", [values[n] for n in names] + list(key.values()))

    def _replace(self, table: str, key: dict, rows) -> None:
        """`table`'s rows of `key` (column -> value) replaced by `rows` (an Arrow table or dicts)."""
        with self.transaction() as con:
            con.execute(f"DELETE FROM {table} WHERE {_where(key)}", list(key.values()))
            rows = pa.Table.from_pylist(rows) if isinstance(rows, list) else rows
            if rows.num_rows:
                self.insert_arrow(table, rows)

    # Table files (parts.py): the catalog rows naming them change in the caller's transaction; files a
    # transaction rolls back are orphans the next job sweeps away.

    def put_part(self, table: str, sae_a: str, sae_b: str, method: str, data, run_id: str) -> None:
        """One pair's rows of a table-file table (method '' for correlations, compositions), replacing earlier
        ones: an Arrow table, or a task's finished table file (parts.write_file's format, run_id included) that
        becomes the pair's file by a rename, its reverse file (name + .by_b) too. A matches file gets its edge
        index (named after the table file: swept with it)."""
        key, root = dict(sae_a=sae_a, sae_b=sae_b, method=method), self.atlas.tables_dir
        where = ["table_name = ? AND sae_a = ? AND sae_b = ? AND method = ?", [table, sae_a, sae_b, method]]
        if isinstance(data, Path):
            rev = Path(parts.reverse_name(str(data)))
            main = parts.PartFile(parts.new_name(table, key), *parts.size_of(data))
            reverse = parts.PartFile(parts.reverse_name(main.file), *parts.size_of(rev)) if rev.exists() else None
            (root / main.file).parent.mkdir(parents=True, exist_ok=True)
            for f, placed in ((data, main), (rev, reverse)):
                if placed is not None:
                    os.replace(f, root / placed.file)
            index = edgeindex.write_for(root / main.file) if table == "matches" else 0
        else:
            data = parts.conform(table, data, run_id=run_id)
            parts.check_keys(table, data, key)
            if not data.num_rows:
                self.drop_parts(*where)
                return
            main, reverse = parts.write_part(root, table, data, key)
            index = edgeindex.write(root / edgeindex.index_name(main.file), data) if table == "matches" else 0
        with self.transaction():
            self.drop_parts(*where)
            self.insert_rows("parts", [dict(key, table_name=table, file=main.file, reverse_file=reverse and reverse.file,
                                            n_rows=main.rows, bytes=main.bytes + index + (reverse.bytes if reverse else 0),
                                            run_id=run_id)])

    def pair_rows(self, table: str, sae_a: str, sae_b: str, method: str, sql: str) -> list[tuple]:
        """`sql` over one pair's table file only (as the relation `rows`), not the view over every file."""
        row = self.con.execute("SELECT file FROM parts WHERE table_name = ? AND sae_a = ? AND sae_b = ? AND method = ?",
                               [table, sae_a, sae_b, method]).fetchone()
        # hive_partitioning = false: the ids in the file, not the (URL-quoted) pair folder names
        path = schema.literal(str(self.atlas.tables_dir / row[0])) if row else None
        source = f"read_parquet({path}, hive_partitioning = false)" if row else f"empty.{table}"
        return self.con.execute(f"WITH rows AS (SELECT * FROM {source}) {sql}").fetchall()

    def drop_parts(self, where: str, params: list) -> None:
        """Take the table files matching `where` (SQL over parts' columns) out of the catalog; the files stay
        for readers of older snapshots until the grace period after this snapshot's publish."""
        with self.transaction() as con:
            con.execute(f"INSERT INTO dropped_parts (file) SELECT f FROM (SELECT unnest([file, reverse_file]) AS f "
                        f"FROM parts WHERE {where}) WHERE f IS NOT NULL", params)
            con.execute(f"DELETE FROM parts WHERE {where}", params)

    def replace_activation_pair(self, sae_a: str, sae_b: str, method: str, tables, stats: dict,
                                quality: dict[str, dict], run_id: str) -> None:
        """A pair's activation results, replacing earlier ones: (name, Arrow table or a task's Parquet shard)
        pairs, read one at a time (correlations, compositions, matches of `method`, examples), `method`'s stats
        row, and the checks of its weight methods (`quality`: method -> pair_stats columns). Shards of table-file
        tables become table files by a rename (parts.write_file's format, run_id included)."""
        with self.transaction():
            self.drop_parts("table_name IN ('correlations', 'compositions') AND sae_a = ? AND sae_b = ?", [sae_a, sae_b])
            self.drop_parts("table_name = 'matches' AND sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            for name, table in tables:
                if name in parts.PART_TABLES:
                    if not isinstance(table, Path) or parts.size_of(table)[0]:  # an empty shard: nothing to adopt
                        self.put_part(name, sae_a, sae_b, method if name == "matches" else "", table, run_id)
                else:
                    table = pq.read_table(table) if isinstance(table, Path) else table
                    if table.num_rows:
                        self.insert_arrow(name, table.append_column("run_id", pa.repeat(run_id, table.num_rows)))
            self._replace_stats(sae_a, sae_b, method, stats, run_id)
            for weight_method, values in quality.items():
                self._update("pair_stats", dict(sae_a=sae_a, sae_b=sae_b, method=weight_method), values)

    def insert_arrow(self, table: str, data, replace: bool = False) -> None:
        """Bulk insert an Arrow table (columns by name) into `table`; with replace, a row whose primary key is
        stored already replaces that row."""
        self._checked(table, data.column_names)
        self.con.register("_incoming", data)
        try:
            cols = ", ".join(data.column_names)
            self.con.execute(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} ({cols}) SELECT {cols} FROM _incoming")
        finally:
            self.con.unregister("_incoming")

    def replace_widths(self, sae_a: str, sae_b: str, rows) -> None:
        """Store one width pair's rows (an Arrow table of the widths columns), replacing earlier ones."""
        self._replace("widths", dict(sae_a=sae_a, sae_b=sae_b), rows)

    def random_baselines(self) -> dict[tuple, float]:
        """The kept random baselines (schema.RANDOM_BASELINE_KEY values -> value; atlas.match.consistency)."""
        return {tuple(r[:-1]): r[-1] for r in self.con.execute(
            f"SELECT {', '.join(schema.RANDOM_BASELINE_KEY)}, value FROM random_baselines").fetchall()}

    def put_random_baselines(self, rows: list[dict], run_id: str) -> None:
        """Keep random baselines (consistency.py rows: key columns, value, seconds), replacing a row of the same key."""
        self.insert_rows("random_baselines", [dict(r, run_id=run_id) for r in rows], replace=True)

    def replace_edge_checks(self, sae_a: str, sae_b: str, method: str, rows) -> None:
        """One pair's ablation checks of `method`'s edges (an Arrow table of edge_checks columns), replacing earlier ones."""
        self._replace("edge_checks", dict(sae_a=sae_a, sae_b=sae_b, method=method), rows)


def _where(key: dict) -> str:
    """SQL condition `c = ? AND ...` over the columns of `key` (values passed as parameters)."""
    return " AND ".join(f"{c} = ?" for c in key)
