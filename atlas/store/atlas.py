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
            writer = Writer(self)
            try:
                yield writer
                writer.publish(final=True)
            finally:
                writer.discard()
        finally:
            lock.close()


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
        """One unit of work: all of it committed, or none."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def insert_arrow(self, table: str, data) -> None:
        """Bulk insert an Arrow table (columns by name) into `table`."""
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
