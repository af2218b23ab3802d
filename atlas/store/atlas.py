"""The atlas on disk: one DuckDB file plus a folder of FAISS indexes, written by snapshot-and-publish
(docs/design.md, Snapshots).

DuckDB lets one process write a file and then nobody else may open it. So a job never writes the
published file: it copies it to a private working file, writes there (one transaction per unit of
work), and publishes with an atomic rename. Readers (the API, the duckdb CLI) keep the snapshot they
opened and see the next one when they reopen; nobody ever sees a half-written job, and a killed job
leaves the published atlas exactly as it was. A lock file keeps to one writing job at a time.
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

from . import schema
from .leases import leased_files

ENV_VAR = "ATLAS_PATH"
DEFAULT_PATH = "atlas.duckdb"


# Every reader (API, user SQL, CLI, tests) opens the file the same locked-down way: read-only, no file
# system or network access, no extension installs, no Python replacement scans, no spilling to disk,
# configuration locked last.
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
    config = dict(SERVING_CONFIG, memory_limit=memory_limit, threads=threads, temp_directory="",
                  lock_configuration=True)
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
        return duckdb.connect(str(target), read_only=True, config=config), (st.st_ino, st.st_mtime_ns)
    finally:
        if target != path:
            target.unlink(missing_ok=True)
            shutil.rmtree(folder, ignore_errors=True)


_opened = itertools.count()


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

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> duckdb.DuckDBPyConnection:
        """A read-only, locked-down connection on the current snapshot."""
        if not self.path.exists():
            raise FileNotFoundError(f"no atlas at {self.path}: run `atlas init` or `atlas ingest` first")
        return connect_serving(self.path)

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
        except (duckdb.Error, OSError):  # no published atlas yet: nothing names any index file
            keep = set()
        keep |= leased_files(self.dir)
        for p in self.index_dir.glob("*.faiss"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)


class Writer:
    """A read-write connection on a working copy of the atlas, with publish()."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas
        self.work = atlas.dir / f"working-{os.getpid()}.duckdb"
        for stale in atlas.dir.glob("working-*"):  # left by a killed job: we hold the lock now
            stale.unlink()
        if atlas.path.exists():
            shutil.copyfile(atlas.path, self.work)
        self.con = duckdb.connect(str(self.work))
        schema.create(self.con)
        # Runs left 'running' in a published snapshot belong to a job that was killed: we hold the lock.
        self.con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        self._drop_stale_indexes()
        self.published_at = time.monotonic()

    def _drop_stale_indexes(self) -> None:
        """Index files no published SAE names (left by a killed job or by --replace), unless a running
        server's snapshot still names them (leases.py)."""
        keep = {r[0] for r in self.con.execute("SELECT index_file FROM saes").fetchall()} | leased_files(self.atlas.dir)
        for p in self.atlas.index_dir.glob("*.faiss"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                p.with_suffix(".json").unlink(missing_ok=True)

    def publish(self, final: bool = False) -> None:
        """Make everything committed so far visible to readers, atomically."""
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
        for p in (self.work, self.work.with_name(self.work.name + ".wal")):
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
            "AND table_name <> 'saes' AND column_name IN ('sae_id', 'sae_a', 'sae_b') AND table_name IN "
            "(SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()) "  # not views
            "GROUP BY 1 ORDER BY 1").fetchall()
        return [(t, "sae_id", "sae_id") if "sae_id" in cols else (t, "sae_a", "sae_b") for t, cols in rows]

    def delete_sae(self, sae_id: str) -> None:
        """An SAE and everything computed from it (matches, stats, correlations, examples, ...)."""
        with self.transaction() as con:
            for table, col_a, col_b in self.per_sae_tables():
                con.execute(f"DELETE FROM {table} WHERE {col_a} = ? OR {col_b} = ?", [sae_id, sae_id])
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
        """One pair-method's matches (Arrow) and stats row, replacing earlier ones."""
        with self.transaction() as con:
            for table in ("matches", "pair_stats"):
                con.execute(f"DELETE FROM {table} WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            self.insert_arrow("matches", matches.append_column("run_id", pa.repeat(run_id, matches.num_rows)))
            self.insert_rows("pair_stats", [dict(stats, sae_a=sae_a, sae_b=sae_b, method=method, run_id=run_id)])

    def update_pair_stats(self, sae_a: str, sae_b: str, method: str, values: dict) -> None:
        """Set columns of one pair-method's stats row (e.g. activation checks of a weight method)."""
        names = self._checked("pair_stats", values)
        self.con.execute(f"UPDATE pair_stats SET {', '.join(f'{n} = ?' for n in names)} WHERE sae_a = ? AND sae_b = ? "
                         f"AND method = ?", [values[n] for n in names] + [sae_a, sae_b, method])

    def replace_activation_pair(self, sae_a: str, sae_b: str, method: str, tables, stats: dict,
                                quality: dict[str, dict], run_id: str) -> None:
        """A pair's activation results, replacing earlier ones: (name, Arrow table) pairs, read one at a time
        (correlations, compositions, matches of `method`, ...), `method`'s stats row, and the checks of its
        weight methods (`quality`: method -> pair_stats columns)."""
        with self.transaction() as con:
            for table in ("correlations", "compositions"):
                con.execute(f"DELETE FROM {table} WHERE sae_a = ? AND sae_b = ?", [sae_a, sae_b])
            for table in ("matches", "pair_stats"):
                con.execute(f"DELETE FROM {table} WHERE sae_a = ? AND sae_b = ? AND method = ?", [sae_a, sae_b, method])
            for name, table in tables:
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
