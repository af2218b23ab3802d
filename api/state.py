"""The served atlas: the newest published snapshot, each on its own DuckDB instance, with its caches.

A request takes the current Snapshot once and asks it for everything (cursor, layers, edge index), so one
answer never mixes two snapshots. When a job publishes, the next request opens the new file on a fresh
DuckDB instance; requests still running on the old one finish there, and it closes when the last of them
drops it. Caches live on the Snapshot, are filled from its own cursor, and are built outside the state
lock (one builder per cache, others wait for it).
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from pathlib import Path

from atlas.match.methods import method as method_info
from atlas.queries import IndexCache
from atlas.queries.lineage import EdgeIndex
from atlas.store import Atlas
from atlas.store.atlas import open_snapshot
from atlas.store.schema import check_version

from .settings import Settings


class Snapshot:
    """One published atlas file, open read-only on its own DuckDB instance."""

    def __init__(self, path: Path, settings: Settings):
        self.con, self.stamp = open_snapshot(path, settings.memory_limit, settings.threads)
        self.id = f"{self.stamp[0]}-{self.stamp[1]}"
        check_version(self.con, str(path))
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._cache: dict[str, object] = {}
        self.index_files = {r[0] for r in self.con.cursor().execute(
            "SELECT index_file FROM saes WHERE index_file IS NOT NULL").fetchall()}

    def cursor(self):
        """A cursor for one request (DuckDB cursors are per thread)."""
        return self.con.cursor()

    def _cached(self, key: str, build):
        if key in self._cache:
            return self._cache[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one builder per key; the state lock is never held meanwhile
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def layers(self) -> dict[str, int]:
        """sae_id -> layer."""
        return self._cached("layers", lambda: dict(self.cursor().execute("SELECT sae_id, layer FROM saes").fetchall()))

    def methods(self) -> list[str]:
        """Matching methods present in this snapshot."""
        return self._cached("methods", lambda: [r[0] for r in self.cursor().execute(
            "SELECT DISTINCT method FROM pair_stats ORDER BY 1").fetchall()])

    def edge_index(self, method: str) -> EdgeIndex | None:
        """Lineage's in-memory edge index of `method` (similarity methods only), built on first use."""
        floor = method_info(method).index_floor
        if floor is None:
            return None
        return self._cached(f"edges:{method}", lambda: EdgeIndex(self.cursor(), method, floor))


class Lease:
    """Tells jobs which index files this server's snapshot names, so they keep them (Writer reads leases).

    The file is held under an exclusive flock for the process's life: a lease whose lock can be taken
    belongs to a dead server and is ignored (and removed) by the next job.
    """

    def __init__(self, atlas: Atlas):
        self.dir = atlas.dir / "leases"
        self.path = self.dir / f"server-{os.getpid()}-{uuid.uuid4().hex[:8]}.txt"
        self._file = None

    def hold(self, names: set[str]) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._file is None:
                self._file = open(self.path, "w")
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.seek(0)
            self._file.truncate()
            self._file.write("\n".join(sorted(names)) + "\n")
            self._file.flush()
        except OSError:  # a read-only atlas folder: no job can write there either
            pass

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.path.unlink(missing_ok=True)


class AtlasState:
    def __init__(self, path: Path, settings: Settings):
        self.atlas = Atlas(path)
        self.settings = settings
        self.indexes = IndexCache(self.atlas.index_dir)
        self._lock = threading.Lock()
        self._current: Snapshot | None = None
        self._lease = Lease(self.atlas)

    def _stamp(self) -> tuple[int, int]:
        st = os.stat(self.atlas.path)
        return st.st_ino, st.st_mtime_ns

    def snapshot(self) -> Snapshot:
        """The newest published snapshot (opened on first use after a job publishes it)."""
        stamp = self._stamp()
        current = self._current
        if current is not None and current.stamp == stamp:
            return current
        with self._lock:
            if self._current is None or self._current.stamp != stamp:
                snap = Snapshot(self.atlas.path, self.settings)  # the file there now (maybe newer than stamp)
                self._lease.hold(snap.index_files | (self._current.index_files if self._current else set()))
                self._current = snap
            return self._current

    def cursor(self):
        """A cursor on the newest snapshot (for callers that need nothing else from it)."""
        return self.snapshot().cursor()

    def close(self) -> None:
        """At shutdown: drop the snapshot and the lease."""
        self._current = None
        self._lease.release()
