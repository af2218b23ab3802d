"""The served atlas: the newest published snapshot, each on its own DuckDB instance, with its caches.

A request takes the current Snapshot once and asks it for everything (cursor, layers, table files), so one
answer never mixes two snapshots. When a job publishes, the next request opens the new file on a fresh
DuckDB instance; requests still running on the old one finish there, and it closes when the last of them
drops it. Caches live on the Snapshot, are filled from its own cursor, and are built outside the state
lock (one builder per cache, others wait for it). Every cache grows with SAEs and pairs, never with match or
feature rows: lineage and cards read the table files by point lookups (atlas/queries/edges.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from atlas import budget
from atlas.queries import IndexCache
from atlas.queries.card import FEATURE_COLUMNS
from atlas.queries.common import SAE_COLUMNS
from atlas.queries.edges import FileEdges
from atlas.store import Atlas, snapshot
from atlas.store.leases import Lease

from .paths import RETRY_S
from .settings import Settings
from .sqlpool import SQLPool, Unavailable


class Snapshot(snapshot.Snapshot):
    """One published atlas file, open read-only on its own DuckDB instance, with the caches of its answers."""

    def __init__(self, path: Path, settings: Settings):
        super().__init__(path, settings.memory_limit, settings.threads, check=True)
        self.id = f"{self.stamp[0]}-{self.stamp[1]}"
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._cache: dict[str, object] = {}
        self.index_files = {r[0] for r in self.con.cursor().execute(
            "SELECT index_file FROM saes WHERE index_file IS NOT NULL").fetchall()}
        self.names_files = bool(self.index_files) or bool(
            self.con.cursor().execute("SELECT count(*) FROM parts").fetchone()[0])

    def cursor(self):
        """A cursor for one request (DuckDB cursors are per thread), stopped with the request's budget."""
        return budget.watch(self.con.cursor())

    def _cached(self, key: str, build):
        if key in self._cache:
            return self._cache[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one builder per key; the state lock is never held meanwhile
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def saes(self) -> dict[str, dict]:
        """sae_id -> its saes row (all columns of SAE_COLUMNS)."""
        def build():
            cur = self.cursor().execute(f"SELECT {', '.join(SAE_COLUMNS)} FROM saes")
            return {r[0]: dict(zip(SAE_COLUMNS, r)) for r in cur.fetchall()}
        return self._cached("saes", build)

    def feature_row(self, sae_id: str, feature: int) -> tuple:
        """(dec_norm, threshold, density, max_act, label) of one feature: one point query, narrowed to the SAE's
        rowid span (a VARCHAR filter alone scans far more of `features`: 3.7 -> 0.75 ms at 1.3M rows)."""
        lo, hi = self.feature_spans().get(sae_id, (0, -1))
        row = self.cursor().execute(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features WHERE rowid BETWEEN ? AND ? "
                                    f"AND sae_id = ? AND feature = ?", [lo, hi, sae_id, feature]).fetchone()
        return row if row is not None else (None,) * len(FEATURE_COLUMNS)

    def feature_spans(self) -> dict[str, tuple[int, int]]:
        """sae_id -> (first, last) rowid of its features in this snapshot (grows with SAEs)."""
        return self._cached("spans", lambda: {s: (lo, hi) for s, lo, hi in self.cursor().execute(
            "SELECT sae_id, min(rowid), max(rowid) FROM features GROUP BY sae_id").fetchall()})

    def with_examples(self) -> set[str]:
        """SAEs that have example contexts (so cards of the others skip that query)."""
        return self._cached("examples", lambda: {r[0] for r in self.cursor().execute(
            "SELECT DISTINCT sae_id FROM examples").fetchall()})

    def files(self) -> FileEdges:
        """The snapshot's matches as table files: catalog, SAE rows and a bounded cache of file footers."""
        return self._cached("files", lambda: FileEdges.of(self.cursor(), self.saes(), examples=self.with_examples(),
                                                          labelled=self.labelled()))

    def labelled(self) -> set[str]:
        """SAEs with any feature label (lineages of the others skip the label query: it scans `features`)."""
        return self._cached("labelled", lambda: {r[0] for r in self.cursor().execute(
            "SELECT DISTINCT sae_id FROM features WHERE label IS NOT NULL").fetchall()})


class AtlasState:
    def __init__(self, path: Path, settings: Settings):
        self.atlas = Atlas(path)
        self.settings = settings
        self.indexes = IndexCache(self.atlas.index_dir)
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
                try:
                    snap = Snapshot(self.atlas.path, self.settings)  # the file there now
                except FileNotFoundError as e:  # the file went, or its views name table files elsewhere
                    raise self._gone(str(e)) from None
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
        self.sql.close()
