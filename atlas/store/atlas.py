"""The atlas on disk: one small DuckDB file (SAEs, features, stats, the catalog of table files) plus
atlas.files/ with the table files (parts.py) and FAISS indexes, written by snapshot-and-publish
(docs/design.md, Snapshots; docs/storage.md).

DuckDB lets one process write a file and then nobody else may open it. So a job never writes the
published file: it copies it to a private working file, writes there (one transaction per unit of
work), and publishes with an atomic rename. Big tables never pass through that copy: a job writes new,
immutable table files and the catalog rows naming them, so a publish costs the same at any atlas size.
Readers (the API, the duckdb CLI) keep the snapshot they opened and see the next one when they reopen;
nobody ever sees a half-written job, and a killed job leaves the published atlas exactly as it was. A
lock file keeps to one writing job at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from . import edgeindex, parts, schema
from .leases import leased_files

ENV_VAR = "ATLAS_PATH"
DEFAULT_PATH = "atlas.duckdb"
STORAGE = {"storage_compatibility_version": "v1.4.0"}
"""New atlas files are written in DuckDB 1.4's storage format, so DuckDB CLIs and clients from 1.4 on open
them (duckdb 2.0 writes a newer format by default that, e.g., the `duckdb-cli` on PyPI cannot read)."""
GRACE_ENV = "ATLAS_GC_GRACE_S"
GRACE_S = 3600.0
"""Table files a publish dropped stay this long for readers of older snapshots (then the next job removes them)."""


# Every reader (API, user SQL, CLI, tests) opens the file the same locked-down way: read-only, no file
# system or network access but the atlas's own table files, no extension installs, no Python replacement
# scans, no spilling to disk, configuration locked last.
SERVING_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
}


def connect_serving(path: str, memory_limit: str = "2GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A read-only, locked-down connection on the file now at `path`, on a DuckDB instance of its own."""
    return open_snapshot(path, memory_limit, threads)[0]


def open_snapshot(path: str | Path, memory_limit: str = "2GB",
                  threads: int = 2) -> tuple[duckdb.DuckDBPyConnection, tuple[int, int]]:
    """(connection, (inode, mtime_ns) of the file it opened) for the snapshot now at `path`.

    DuckDB keeps one instance per path and hands it back while any connection to it lives, so reopening a
    path whose file a job has since replaced would return the old, replaced database. Opening through a
    hard link of a name used once (atlas.files/open/<unique>/<name>) gives a fresh instance on exactly the
    file that was there when linked, under the usual catalog name; the link goes as soon as it is open.
    """
    path = Path(path).resolve()
    # allowed_directories can only be set on a running database, before external access is turned off
    config = {k: v for k, v in SERVING_CONFIG.items() if k != "enable_external_access"}
    config.update(memory_limit=memory_limit, threads=threads, temp_directory="")
    tables = tables_dir(path)
    folder = path.with_name(path.stem + ".files") / "open" / f"{os.getpid()}-{next(_opened)}"
    target = folder / path.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.link(path, target)
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        raise FileNotFoundError(f"no atlas at {path}: run `atlas init` or `atlas ingest` first") from None
    except OSError:  # a read-only folder or a file system without links: no job can replace the file there
        shutil.rmtree(folder, ignore_errors=True)
        target = path
    try:
        st = os.stat(target)
        con = duckdb.connect(str(target), read_only=True, config=config)
        try:
            con.execute(f"SET allowed_directories = [{schema._quote(str(tables) + os.sep)}]")
            con.execute("SET enable_external_access = false")
            named = schema.files_root(con)
            if named is not None and named != str(tables) and schema.version_of(con) == schema.SCHEMA_VERSION and \
                    con.execute("SELECT count(*) FROM parts").fetchone()[0]:
                raise FileNotFoundError(f"{path}: its views name table files under {named}, but the atlas is now "
                                        f"here: run `atlas migrate` once to point them at {tables} (an atlas is the "
                                        f"DuckDB file and its {tables.parent.name}/ folder: copy or move them together)")
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return con, (st.st_ino, st.st_mtime_ns)
    finally:
        if target != path:
            target.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)


_opened = itertools.count()


def tables_dir(path: str | Path) -> Path:
    """atlas.duckdb -> atlas.files/tables/ (absolute): where the table files live."""
    path = Path(path).resolve()
    return path.with_name(path.stem + ".files") / "tables"


class AtlasBusy(RuntimeError):
    """Another job holds the atlas's write lock."""


def default_path() -> Path:
    return Path(os.environ.get(ENV_VAR, DEFAULT_PATH))


@dataclass
class Atlas:
    path: Path

    def __post_init__(self):
        self.path = Path(self.path)

    @property
    def dir(self) -> Path:
        """Side folder for FAISS indexes, working copies and results: atlas.duckdb -> atlas.files/."""
        return self.path.with_name(self.path.stem + ".files")

    @property
    def index_dir(self) -> Path:
        return self.dir / "indexes"

    @property
    def tables_dir(self) -> Path:
        """Table files of matches, correlations and compositions (parts.py)."""
        return tables_dir(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    def copy_to(self, path: str | Path) -> "Atlas":
        """A copy of this atlas at `path`: its DuckDB file and its folder's table and index files (hard links
        where the file system allows: those files are never rewritten in place)."""
        other = Atlas(path)
        shutil.copyfile(self.path, other.path)

        def link(src, dst):
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        for sub in ("tables", "indexes"):
            if (self.dir / sub).exists():
                shutil.copytree(self.dir / sub, other.dir / sub, copy_function=link, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.tmp"))
        if schema.files_root(con := duckdb.connect(str(other.path))) is not None:  # views name the copy's files
            schema.part_views(con, other.tables_dir)
        con.close()
        return other

    def read(self) -> duckdb.DuckDBPyConnection:
        """A read-only, locked-down connection on the current snapshot."""
        if not self.path.exists():
            raise FileNotFoundError(f"no atlas at {self.path}: run `atlas init` or `atlas ingest` first")
        con = connect_serving(self.path)
        try:
            schema.check_version(con, str(self.path))
        except BaseException:
            con.close()
            raise
        return con

    @contextlib.contextmanager
    def write(self, wait: bool = False):
        """Yield a Writer on a private copy; publish on success, discard on error or kill."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.dir / "write.lock", "a+")
        try:
            flags = fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB
            try:
                fcntl.flock(lock, flags)
            except BlockingIOError:
                lock.seek(0)
                raise AtlasBusy(f"another job is writing {self.path} ({lock.read().strip()}); "
                                f"wait for it or stop it") from None
            lock.seek(0), lock.truncate(), lock.write(f"pid {os.getpid()}"), lock.flush()
            writer = None
            try:
                writer = Writer(self)
                yield writer
                writer.publish(final=True)
            except BaseException:
                if writer is not None:
                    writer.discard()
                self._clean_after_failure()
                raise
            finally:
                if writer is not None:
                    writer.discard()
        finally:
            lock.close()

    def _clean_after_failure(self) -> None:
        """A failed job (disk full, bad input, kill) leaves nothing behind: its working copy, a half-copied
        publish, result shards, and index files no published snapshot or running server names."""
        for p in [*self.dir.glob("working-*"), self.path.with_name(self.path.name + ".publishing")]:
            p.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "results", ignore_errors=True)
        try:
            with connect_serving(str(self.path)) as con:
                keep = {r[0] for r in con.execute("SELECT index_file FROM saes").fetchall()}
                files = referenced_files(con) if schema.files_root(con) is not None else set()
        except (duckdb.Error, OSError):  # no published atlas yet: nothing names any index or table file
            keep, files = set(), set()
        sweep_table_files(self.tables_dir, files)
        keep |= leased_files(self.dir)
        for p in self.index_dir.glob("*.faiss"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)


def _runs(batch: pa.RecordBatch, keys: list[str]) -> list[tuple[tuple, pa.RecordBatch]]:
    """A batch sorted by `keys` cut into its runs of equal keys: [(key values, rows), ...]."""
    import numpy as np
    import pyarrow.compute as pc

    n = batch.num_rows
    if n == 0:
        return []
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        col = batch.column(k)
        change[1:] |= pc.not_equal(col.slice(1), col.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    starts = np.nonzero(change)[0].tolist() + [n]
    return [(tuple(batch.column(k)[s].as_py() for k in keys), batch.slice(s, e - s))
            for s, e in zip(starts[:-1], starts[1:])]


def referenced_files(con) -> set[str]:
    """Files a snapshot names: its parts (their reverse files and edge indexes, named after the table file)
    and the dropped ones still kept."""
    named = {r[0] for r in con.execute(
        "SELECT f FROM (SELECT unnest([file, reverse_file]) AS f FROM parts UNION ALL SELECT file FROM dropped_parts) "
        "WHERE f IS NOT NULL").fetchall()}
    return named | {edgeindex.index_name(f) for f in named}


def sweep_table_files(root: Path, keep: set[str]) -> int:
    """Remove every file under the tables folder that `keep` does not name: a killed or failed job's table
    and index files, temporary files, anything else put there by hand. Only a holder of the write lock calls this."""
    removed = 0
    for folder, dirs, files in os.walk(root, topdown=False):  # one pass; pair folders left empty go too
        for name in files:
            p = Path(folder) / name
            if p.relative_to(root).as_posix() not in keep:
                p.unlink(missing_ok=True)
                removed += 1
        if folder != str(root) and not dirs and not any(Path(folder).iterdir()):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return removed


class Writer:
    """A read-write connection on a working copy of the atlas, with publish()."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self.work = atlas.dir / f"working-{os.getpid()}.duckdb"
        for stale in [*atlas.dir.glob("working-*"), atlas.path.with_name(atlas.path.name + ".publishing")]:
            stale.unlink(missing_ok=True)  # left by a killed job: we hold the lock now
        if atlas.path.exists():
            shutil.copyfile(atlas.path, self.work)
        self.con = duckdb.connect(str(self.work), config=STORAGE)
        self.moved_out = False
        self.upgraded_from = schema.version_of(self.con)
        schema.create(self.con, atlas.tables_dir, self.move_tables_out)
        if self.moved_out:
            self._compact()
        # Runs left 'running' in a published snapshot belong to a job that was killed: we hold the lock.
        self.con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        self._drop_stale_indexes()
        self._collect_table_files()
        self.published_at = time.monotonic()

    def _collect_table_files(self) -> None:
        """Remove table files dropped more than the grace period ago (but not those a running export leases),
        and files no snapshot names."""
        grace = float(os.environ.get(GRACE_ENV, GRACE_S))
        leased = leased_files(self.atlas.dir)
        old = [r[0] for r in self.con.execute(
            "SELECT file FROM dropped_parts WHERE dropped_at <= current_timestamp::TIMESTAMP - to_seconds(?)",
            [grace]).fetchall() if r[0] not in leased]
        for rel in old:
            (self.atlas.tables_dir / rel).unlink(missing_ok=True)
            (self.atlas.tables_dir / edgeindex.index_name(rel)).unlink(missing_ok=True)
        if old:
            self.con.execute("DELETE FROM dropped_parts WHERE file IN (SELECT unnest(?))", [old])
        sweep_table_files(self.atlas.tables_dir, referenced_files(self.con))

    def move_tables_out(self, con) -> None:
        """Schema 4 -> 5 (`atlas migrate`): each pair's rows of matches, correlations and compositions become a
        table file, read in one ordered pass per table, then the tables go."""
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = "
                                             "current_database() AND schema_name = 'main'").fetchall()}
        for table, spec in parts.PART_TABLES.items():
            if table not in present:
                continue
            keys = [k for k in ("sae_a", "sae_b", "method") if k in spec.keys]
            n = con.execute(f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(keys)} FROM {table})").fetchone()[0]
            reader = con.cursor().sql(f"SELECT * FROM {table} ORDER BY {', '.join(keys)}").to_arrow_reader(1 << 16)
            batches, current = [], None
            with tqdm(total=n, desc=f"moving {table} into table files", unit="pair", disable=n < 2) as bar:
                for batch in [*reader, None]:
                    groups = [] if batch is None else _runs(batch, keys)
                    for key, piece in groups:
                        if current is not None and key != current:
                            self._move_group(table, current, batches)
                            batches = []
                            bar.update()
                        current = key
                        batches.append(piece)
                if current is not None:
                    self._move_group(table, current, batches)
                    bar.update()
            con.execute(f"DROP TABLE {table}")
        self.moved_out = True

    def _move_group(self, table: str, key: tuple, batches: list) -> None:
        data = pa.Table.from_batches(batches)
        run_id = data["run_id"][0].as_py()
        a, b, method = key if len(key) == 3 else (*key, "")
        self.put_part(table, a, b, method, data, run_id)

    def _compact(self) -> None:
        """After moving the tables out: rewrite the working file without their free blocks (DuckDB does not
        shrink a file), so the published catalog is small."""
        self.con.execute("CHECKPOINT")
        self.con.close()
        fresh = self.work.with_name(self.work.stem + "-compact.duckdb")
        fresh.unlink(missing_ok=True)
        con = duckdb.connect(str(fresh), config=STORAGE)
        con.execute(f"ATTACH {schema._quote(str(self.work))} AS old (READ_ONLY)")
        con.execute(f"COPY FROM DATABASE old TO {schema._quote(fresh.stem)}".replace("'", '"'))
        con.execute("DETACH old")
        con.close()
        os.replace(fresh, self.work)
        self.con = duckdb.connect(str(self.work), config=STORAGE)
        schema.create(self.con, self.atlas.tables_dir)

    def build_edge_indexes(self) -> int:
        """Write the edge index of each matches file that lacks one (an atlas from before edge indexes; `atlas
        migrate`); how many. Readers serve such files from Parquet meanwhile (atlas.queries.edges)."""
        missing = [r[0] for r in self.con.execute("SELECT file FROM parts WHERE table_name = 'matches'").fetchall()
                   if not (self.atlas.tables_dir / edgeindex.index_name(r[0])).exists()]
        for rel in tqdm(missing, desc="edge indexes", unit="file", disable=len(missing) < 2):
            edgeindex.write_for(self.atlas.tables_dir / rel)
        return len(missing)

    def _drop_stale_indexes(self) -> None:
        """Index files no published SAE names (left by a killed job or by --replace), unless a running
        server's snapshot still names them (leases.py)."""
        keep = {r[0] for r in self.con.execute("SELECT index_file FROM saes").fetchall()} | leased_files(self.atlas.dir)
        for p in self.atlas.index_dir.glob("*.faiss"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)

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
        self._remove_work()

    def _remove_work(self) -> None:
        compact = self.work.with_name(self.work.stem + "-compact.duckdb")
        for p in (self.work, self.work.with_name(self.work.name + ".wal"), compact):
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

    def insert_rows(self, table: str, rows: list[dict]) -> None:
        """Insert rows given as dicts (keys must be columns of `table`)."""
        if not rows:
            return
        self.insert_arrow(table, pa.Table.from_pylist(rows))

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
        names = self._checked("saes", values)
        sets = ", ".join(f"{n} = coalesce({n}, ?)" if only_missing else f"{n} = ?" for n in names)
        self.con.execute(f"UPDATE saes SET {sets} WHERE sae_id = ?", [values[n] for n in names] + [sae_id])

    def finish_run(self, run_id: str, finished_at, status: str = "ok") -> None:
        self.con.execute("UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?", [status, finished_at, run_id])

    def replace_pair(self, sae_a: str, sae_b: str, method: str, matches, stats: dict, run_id: str) -> None:
        """One pair-method's matches (Arrow; written as a table file) and stats row, replacing earlier ones."""
        with self.transaction() as con:
            self.put_part("matches", sae_a, sae_b, method, matches, run_id)
            con.execute("DELETE FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            self.insert_rows("pair_stats", [dict(stats, sae_a=sae_a, sae_b=sae_b, method=method, run_id=run_id)])

    def adopt_pair(self, sae_a: str, sae_b: str, method: str, shard: Path, stats: dict, run_id: str) -> None:
        """The same as replace_pair for a task's finished shard (parts.write_part's format): it becomes the
        table file by a rename, its reverse file (shard name + .by_b) too."""
        with self.transaction() as con:
            self.adopt_part("matches", sae_a, sae_b, method, Path(shard), run_id)
            con.execute("DELETE FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            self.insert_rows("pair_stats", [dict(stats, sae_a=sae_a, sae_b=sae_b, method=method, run_id=run_id)])

    # Table files (parts.py): the catalog rows naming them change in the caller's transaction; files a
    # transaction rolls back are orphans the next job sweeps away.

    def put_part(self, table: str, sae_a: str, sae_b: str, method: str, data, run_id: str) -> None:
        """One pair's rows of a table-file table (method '' for correlations, compositions), replacing earlier ones."""
        data = parts.conform(table, data, run_id=run_id)
        parts.check_keys(table, data, dict(sae_a=sae_a, sae_b=sae_b, method=method))
        if not data.num_rows:
            self.drop_parts("table_name = ? AND sae_a = ? AND sae_b = ? AND method = ?", [table, sae_a, sae_b, method])
            return
        key = dict(sae_a=sae_a, sae_b=sae_b, method=method)
        main, reverse = parts.write_part(self.atlas.tables_dir, table, data, key)
        self._swap_part(table, sae_a, sae_b, method, main, reverse, run_id)

    def adopt_part(self, table: str, sae_a: str, sae_b: str, method: str, path: Path, run_id: str) -> None:
        """A finished table file (conformed, sorted, with run_id) becomes `table`'s file of the pair by a rename."""
        found = [parts.PartFile(path, *parts.size_of(path))]
        rev = Path(parts.reverse_name(str(path)))
        if rev.exists():
            found.append(parts.PartFile(rev, *parts.size_of(rev)))
        main = parts.new_name(table, dict(sae_a=sae_a, sae_b=sae_b, method=method))
        placed = [main, parts.reverse_name(main)]
        (self.atlas.tables_dir / main).parent.mkdir(parents=True, exist_ok=True)
        for f, rel in zip(found, placed):
            os.replace(f.file, self.atlas.tables_dir / rel)
        done = [parts.PartFile(rel, f.rows, f.bytes) for f, rel in zip(found, placed)]
        if table == "matches":  # its edge index, built from the placed file (named after it: swept with it)
            done[0] = parts.PartFile(main, done[0].rows, done[0].bytes + edgeindex.write_for(self.atlas.tables_dir / main))
        self._swap_part(table, sae_a, sae_b, method, done[0], done[1] if len(done) > 1 else None, run_id)

    def _swap_part(self, table, sae_a, sae_b, method, main, reverse, run_id) -> None:
        with self.transaction():
            self.drop_parts("table_name = ? AND sae_a = ? AND sae_b = ? AND method = ?", [table, sae_a, sae_b, method])
            self.insert_rows("parts", [dict(table_name=table, sae_a=sae_a, sae_b=sae_b, method=method, file=main.file,
                                            reverse_file=reverse.file if reverse else None, n_rows=main.rows,
                                            bytes=main.bytes + (reverse.bytes if reverse else 0), run_id=run_id)])

    def pair_rows(self, table: str, sae_a: str, sae_b: str, method: str, sql: str) -> list[tuple]:
        """`sql` over one pair's table file only (as the relation `rows`), not the view over every file."""
        row = self.con.execute("SELECT file FROM parts WHERE table_name = ? AND sae_a = ? AND sae_b = ? AND method = ?",
                               [table, sae_a, sae_b, method]).fetchone()
        # hive_partitioning = false: the ids in the file, not the (URL-quoted) pair folder names
        path = schema._quote(str(self.atlas.tables_dir / row[0])) if row else None
        source = f"read_parquet({path}, hive_partitioning = false)" if row else f"empty.{table}"
        return self.con.execute(f"WITH rows AS (SELECT * FROM {source}) {sql}").fetchall()

    def drop_parts(self, where: str, params: list) -> None:
        """Take the table files matching `where` (SQL over parts' columns) out of the catalog; the files stay
        for readers of older snapshots until the grace period after this snapshot's publish."""
        with self.transaction() as con:
            con.execute(f"INSERT INTO dropped_parts (file) SELECT f FROM (SELECT unnest([file, reverse_file]) AS f "
                        f"FROM parts WHERE {where}) WHERE f IS NOT NULL", params)
            con.execute(f"DELETE FROM parts WHERE {where}", params)

    def update_pair_stats(self, sae_a: str, sae_b: str, method: str, values: dict) -> None:
        """Set columns of one pair-method's stats row (e.g. activation checks of a weight method)."""
        names = self._checked("pair_stats", values)
        self.con.execute(f"UPDATE pair_stats SET {', '.join(f'{n} = ?' for n in names)} WHERE sae_a = ? AND sae_b = ? "
                         f"AND method = ?", [values[n] for n in names] + [sae_a, sae_b, method])

    def replace_activation_pair(self, sae_a: str, sae_b: str, method: str, tables, stats: dict,
                                quality: dict[str, dict], run_id: str) -> None:
        """A pair's activation results, replacing earlier ones: (name, Arrow table or a task's Parquet shard)
        pairs, read one at a time (correlations, compositions, matches of `method`, examples), `method`'s stats
        row, and the checks of its weight methods (`quality`: method -> pair_stats columns). Shards of table-file
        tables become table files by a rename (parts.write_file's format, run_id included)."""
        with self.transaction() as con:
            self.drop_parts("table_name IN ('correlations', 'compositions') AND sae_a = ? AND sae_b = ?", [sae_a, sae_b])
            self.drop_parts("table_name = 'matches' AND sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            con.execute("DELETE FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            for name, table in tables:
                key = method if name == "matches" else ""
                if name in parts.PART_TABLES and isinstance(table, Path):  # a task's finished table file
                    if parts.size_of(table)[0]:
                        self.adopt_part(name, sae_a, sae_b, key, table, run_id)
                elif name in parts.PART_TABLES:
                    self.put_part(name, sae_a, sae_b, key, table, run_id)
                else:
                    table = pq.read_table(table) if isinstance(table, Path) else table
                    if table.num_rows:
                        self.insert_arrow(name, table.append_column("run_id", pa.repeat(run_id, table.num_rows)))
            self.insert_rows("pair_stats", [dict(stats, sae_a=sae_a, sae_b=sae_b, method=method, run_id=run_id)])
            for weight_method, values in quality.items():
                self.update_pair_stats(sae_a, sae_b, weight_method, values)

    def insert_arrow(self, table: str, data) -> None:
        """Bulk insert an Arrow table (columns by name) into `table`."""
        self._checked(table, data.column_names)
        self.con.register("_incoming", data)
        try:
            cols = ", ".join(data.column_names)
            self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _incoming")
        finally:
            self.con.unregister("_incoming")

    def replace_widths(self, sae_a: str, sae_b: str, rows) -> None:
        """Store one width pair's rows (an Arrow table of the widths columns), replacing earlier ones."""
        with self.transaction() as con:
            con.execute("DELETE FROM widths WHERE sae_a = ? AND sae_b = ?", [sae_a, sae_b])
            self.insert_arrow("widths", rows)

    def replace_edge_checks(self, sae_a: str, sae_b: str, method: str, rows) -> None:
        """One pair's ablation checks of `method`'s edges (an Arrow table of edge_checks columns), replacing earlier ones."""
        with self.transaction() as con:
            con.execute("DELETE FROM edge_checks WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            if rows.num_rows:
                self.insert_arrow("edge_checks", rows)
