"""The served atlas: the newest published snapshot, each on its own DuckDB instance (atlas.store.Snapshot, which
holds everything that depends only on it), the SQL workers and the lease on the files the snapshots name.

A request takes the current Snapshot once and asks it for everything (cursors, SAEs, table files), so one answer
never mixes two snapshots. When a job publishes, the next request opens the new file on a fresh DuckDB instance;
requests still running on the old one finish there, and it closes when the last of them drops it.
"""

from __future__ import annotations

import threading
from pathlib import Path

from atlas.index import IndexCache
from atlas.store import Atlas, Snapshot
from atlas.store.leases import Lease

from .paths import RETRY_S
from .settings import Settings
from .sqlpool import SQLPool, Unavailable


class AtlasState:
    def __init__(self, path: Path, settings: Settings):
        self.atlas = Atlas(path)
        self.settings = settings
        self.faiss = IndexCache(self.atlas.index_dir)  # shared by its snapshots: index files never change
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._lease = Lease(self.atlas.dir)
        self.sql = SQLPool(str(self.atlas.path), settings.sql_workers, settings.memory_limit, settings.threads)

    def _is_current(self, snap: Snapshot | None) -> bool:
        try:
            current = snap is not None and snap.is_current()
        except OSError:
            raise self._gone("its DuckDB file is not there; if it was moved, move it back with its .files/ folder")\
                from None
        if current and snap.names_files:
            self.check_folder()
        return current

    def check_folder(self) -> None:
        """Unavailable unless the atlas's .files/ folder is there (one stat: the request would read from it)."""
        if not self.atlas.dir.is_dir():
            raise self._gone(f"its folder {self.atlas.dir.name}/ is not there; if it was moved, move it back beside "
                             f"{self.atlas.path.name}")

    def check_present(self) -> None:
        """Unavailable unless the atlas file and its folder are where the server found them (two stats, no
        DuckDB: cheap enough for the event loop)."""
        if not self.atlas.path.exists():
            raise self._gone("its DuckDB file is not there; if it was moved, move it back with its .files/ folder")
        self.check_folder()

    def _gone(self, why: str) -> Unavailable:
        return Unavailable(f"the atlas at {self.atlas.path} cannot be served now: {why} (this server tries again on "
                           f"every request)", RETRY_S)

    def snapshot(self) -> Snapshot:
        """The newest published snapshot (opened on first use after a job publishes it).

        An atlas that moved (file gone, or views naming another folder) is a 503 on each request, never a
        snapshot kept: once it is back or `atlas migrate` has run, the next request opens it."""
        current = self._current
        if self._is_current(current):
            return current
        with self._lock:
            if not self._is_current(self._current):
                try:  # the file there now
                    snap = Snapshot(self.atlas.path, self.settings.memory_limit, self.settings.threads, check=True,
                                    faiss=self.faiss)
                except FileNotFoundError as e:  # the file went, or its views name table files elsewhere
                    raise self._gone(str(e)) from None
                self._lease.hold(snap.index_files | (self._current.index_files if self._current else set()))
                self._current = snap
            return self._current

    def close(self) -> None:
        """At shutdown: drop the snapshot and the lease."""
        self._current = None
        self._lease.release()
        self.sql.close()
