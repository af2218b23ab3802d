"""Index-file leases: a server names the FAISS files its snapshots use, and jobs keep those files.

A job deletes index files that no SAE of the atlas names any more (left by --replace or a killed job).
A server may still serve an older snapshot that names one of them, so each server holds a lease file
under atlas.files/leases/ listing its files, under an exclusive flock for as long as the process lives.
A lease whose lock a job can take belongs to a dead server: the job ignores and removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path


class Lease:
    """This process's lease on the index files of the snapshots it serves."""

    def __init__(self, atlas_dir: Path):
        self.dir = Path(atlas_dir) / "leases"
        self.path = self.dir / f"server-{os.getpid()}-{uuid.uuid4().hex[:8]}.txt"
        self._file = None

    def hold(self, names: set[str]) -> None:
        try:
            self.dir.mkdir(exist_ok=True)  # never the atlas folder itself: moved away, it is not this lease's to make
            if self._file is None:
                self._file = open(self.path, "w")
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.seek(0)
            self._file.truncate()
            self._file.write("".join(f"{n}\n" for n in sorted(names)))
            self._file.flush()
        except OSError:  # a read-only atlas folder: no job can delete files there either
            pass

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None


def leased_files(atlas_dir: Path) -> set[str]:
    """Index files named by the leases of live servers; leases of dead ones are removed."""
    names: set[str] = set()
    for p in (Path(atlas_dir) / "leases").glob("server-*.txt"):
        with contextlib.suppress(OSError), open(p) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: its server lives
                names.update(line.strip() for line in f if line.strip())
                continue
            p.unlink(missing_ok=True)  # nobody holds it: a server that died
    return names
