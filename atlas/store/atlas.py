"""The atlas on disk: one small DuckDB file (SAEs, features, stats, the catalog of table files) plus atlas.files/
with the table files (parts.py) and FAISS indexes. DuckDB lets one process write a file and then nobody else may
open it, so one job at a time (a lock file) writes a private copy (writer.py) and publishes it by an atomic rename;
readers keep the snapshot they opened (snapshot.py), and a killed job leaves the published atlas as it was
(docs/design.md, Snapshots; docs/storage.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from . import collection, schema
from .snapshot import Snapshot, files_dir, tables_dir
from .writer import Writer

ENV_VAR = "ATLAS_PATH"
DEFAULT_PATH = "atlas.duckdb"


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
        return files_dir(self.path)

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

    def read(self) -> Snapshot:
        """The current snapshot, open read-only and locked down (a context manager: closed on exit)."""
        if not self.path.exists():
            raise FileNotFoundError(f"no atlas at {self.path}: run `atlas init` or `atlas ingest` first")
        return Snapshot(self.path, check=True)

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
            with Snapshot(self.path).con as con:
                named = collection.named_files(con)
        except (duckdb.Error, OSError):  # no published atlas yet: nothing names any index or table file
            named = set(), set()
        collection.sweep(self, *named)
