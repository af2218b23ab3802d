"""The served atlas: a locked-down read-only connection on the current snapshot, reopened when a job
publishes a new one, and a cursor per request (DuckDB cursors are per thread)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from atlas.queries import IndexCache
from atlas.queries.lineage import EdgeIndex
from atlas.queries.sqlguard import connect_serving
from atlas.store import Atlas
from atlas.store.schema import check_version

from .settings import Settings


class AtlasState:
    def __init__(self, path: Path, settings: Settings):
        self.atlas = Atlas(path)
        self.settings = settings
        self.indexes = IndexCache(self.atlas.index_dir)
        self._lock = threading.Lock()
        self._con = None
        self._stamp = None
        self._edge_indexes: dict[str, EdgeIndex] = {}
        self._layers: dict[str, int] | None = None
        self._methods: list[str] | None = None

    def _snapshot_stamp(self):
        st = os.stat(self.atlas.path)
        return st.st_ino, st.st_mtime_ns

    def cursor(self):
        """A cursor on the newest published snapshot."""
        stamp = self._snapshot_stamp()
        with self._lock:
            if stamp != self._stamp:
                # The old connection stays alive while cursors opened on it finish (they hold it).
                con = connect_serving(str(self.atlas.path), self.settings.memory_limit, self.settings.threads)
                check_version(con, str(self.atlas.path))
                self._con = con
                self._edge_indexes = {}
                self._layers = None
                self._methods = None
                self._stamp = stamp
            return self._con.cursor()

    def layers(self, con) -> dict[str, int]:
        """sae_id -> layer of this snapshot."""
        if self._layers is None:
            self._layers = dict(con.execute("SELECT sae_id, layer FROM saes").fetchall())
        return self._layers

    def methods(self, con) -> list[str]:
        """Matching methods present in this snapshot."""
        if self._methods is None:
            self._methods = [r[0] for r in con.execute("SELECT DISTINCT method FROM pair_stats ORDER BY 1").fetchall()]
        return self._methods

    def edge_index(self, method: str, con) -> EdgeIndex | None:
        """Lineage's in-memory edge index for this snapshot (similarity methods), built on first use."""
        if method.endswith("_mse"):
            return None
        with self._lock:
            if method not in self._edge_indexes:
                self._edge_indexes[method] = EdgeIndex(con, method)
            return self._edge_indexes[method]

    @property
    def snapshot(self) -> str:
        ino, mtime = self._stamp or self._snapshot_stamp()
        return f"{ino}-{mtime}"
