"""The served atlas: a locked-down read-only connection on the current snapshot, reopened when a job
publishes a new one, and a cursor per request (DuckDB cursors are per thread)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from atlas.queries import IndexCache
from atlas.queries.sqlguard import connect_serving
from atlas.store import Atlas

from .settings import Settings


class AtlasState:
    def __init__(self, path: Path, settings: Settings):
        self.atlas = Atlas(path)
        self.settings = settings
        self.indexes = IndexCache(self.atlas.index_dir)
        self._lock = threading.Lock()
        self._con = None
        self._stamp = None

    def _snapshot_stamp(self):
        st = os.stat(self.atlas.path)
        return st.st_ino, st.st_mtime_ns

    def cursor(self):
        """A cursor on the newest published snapshot."""
        stamp = self._snapshot_stamp()
        with self._lock:
            if stamp != self._stamp:
                # The old connection stays alive while cursors opened on it finish (they hold it).
                self._con = connect_serving(str(self.atlas.path), self.settings.memory_limit, self.settings.threads)
                self._stamp = stamp
            return self._con.cursor()

    @property
    def snapshot(self) -> str:
        ino, mtime = self._stamp or self._snapshot_stamp()
        return f"{ino}-{mtime}"
