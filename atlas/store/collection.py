"""Collection: table and index files that no snapshot names leave the atlas folder (docs/design.md,
Snapshots). Only a holder of the write lock calls these; files a live server or export leases stay (leases.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from . import edgeindex, schema
from .leases import leased_files

GRACE_ENV = "ATLAS_GC_GRACE_S"
GRACE_S = 3600.0
"""Table files a publish dropped stay this long for readers of older snapshots (then the next job removes them)."""


def named_files(con) -> tuple[set[str], set[str]]:
    """(FAISS index files, table files) a snapshot names. Its table files: those of its parts (their reverse
    files and edge indexes, named after the table file) and the dropped ones still kept."""
    indexes = {r[0] for r in con.execute("SELECT index_file FROM saes").fetchall()}
    if schema.files_root(con) is None:  # an atlas from before table files
        return indexes, set()
    files = {r[0] for r in con.execute(
        "SELECT f FROM (SELECT unnest([file, reverse_file]) AS f FROM parts UNION ALL SELECT file FROM dropped_parts) "
        "WHERE f IS NOT NULL").fetchall()}
    return indexes, files | {edgeindex.index_name(f) for f in files}


def sweep(atlas, indexes: set[str], files: set[str]) -> None:
    """Remove the FAISS index files and the table files that a snapshot does not name (named_files): a killed
    or failed job's files, temporary files, anything put there by hand."""
    keep = indexes | leased_files(atlas.dir)
    for p in atlas.index_dir.glob("*.faiss"):
        if p.name not in keep:
            p.unlink(missing_ok=True)
            p.with_suffix(".json").unlink(missing_ok=True)
    root = atlas.tables_dir
    for folder, dirs, names in os.walk(root, topdown=False):  # one pass; pair folders left empty go too
        for name in names:
            p = Path(folder) / name
            if p.relative_to(root).as_posix() not in files:
                p.unlink(missing_ok=True)
        if folder != str(root) and not dirs and not any(Path(folder).iterdir()):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def collect_dropped(atlas, con) -> None:
    """Remove the table files (with their edge indexes) dropped more than the grace period ago, and their
    dropped_parts rows."""
    grace = float(os.environ.get(GRACE_ENV, GRACE_S))
    leased = leased_files(atlas.dir)
    old = [r[0] for r in con.execute(
        "SELECT file FROM dropped_parts WHERE dropped_at <= current_timestamp::TIMESTAMP - to_seconds(?)",
        [grace]).fetchall() if r[0] not in leased]
    for rel in old:
        (atlas.tables_dir / rel).unlink(missing_ok=True)
        (atlas.tables_dir / edgeindex.index_name(rel)).unlink(missing_ok=True)
    if old:
        con.execute("DELETE FROM dropped_parts WHERE file IN (SELECT unnest(?))", [old])
