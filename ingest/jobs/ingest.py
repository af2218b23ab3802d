"""Ingest job: validated SAEs into the atlas (saes + features rows) with a FAISS index each."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas import index as fx
from atlas.queries.common import SAE_COLUMNS, require_saes
from atlas.sae import SAEError, SAEMeta, SAERecord
from atlas.store import Atlas, Writer, record_run


@dataclass
class IngestSummary:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # weights already stored under another id: metadata merged
    features: int = 0
    seconds: float = 0.0


def ingest(atlas: Atlas, sources: Iterable[Callable[[], SAERecord]], replace: bool = False,
           factory: str | None = None, progress=None, params: dict | None = None) -> IngestSummary:
    """Read each source and store it; the whole job publishes at once or not at all."""
    summary = IngestSummary()
    t0 = time.perf_counter()
    with atlas.write() as w, record_run(w, "ingest", params or {"replace": replace, "factory": factory}):
        for read in sources:
            rec = read()
            status = (_known(w, rec.meta, by_hash=not replace)
                      or commit_sae(w, prepare(rec, w.atlas.index_dir, factory), replace))
            _count(summary, rec.meta, status, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


@dataclass(frozen=True)
class IngestTask:
    """One SAE to ingest, by reference: its path, layout and metadata overrides."""

    path: str
    fmt: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    factory: str | None = None


@dataclass
class Prepared:
    """What storing an SAE needs, computed anywhere: its metadata, its FAISS index (already written
    under a name no snapshot uses yet) and its features rows."""

    meta: SAEMeta
    index_file: str
    factory: str
    features: pa.Table


def prepare(rec: SAERecord, index_dir: Path, factory: str | None) -> Prepared:
    m = rec.meta
    factory = factory or fx.default_factory(m.d_sae)
    index_file = f"{m.sae_id}-{m.sha256[:12]}.faiss"
    # Written before the commit under a name no published snapshot uses, so a kill leaves nothing stale.
    fx.save(fx.build(rec.weights.W_dec, factory), Path(index_dir) / index_file, factory)
    return Prepared(m, index_file, factory, feature_rows(rec))


def run_ingest(task: IngestTask, index_dir: str) -> Prepared:
    """The pure part of ingesting one SAE: read, validate, index; runs in-process or as a Ray task."""
    from atlas_ingest.sources import read_sae

    rec = read_sae(task.path, fmt=task.fmt, **dict(task.overrides))
    return prepare(rec, Path(index_dir), task.factory)


def ingest_paths(atlas: Atlas, paths: list[Path], overrides: dict | None = None, fmt: str | None = None,
                 replace: bool = False, factory: str | None = None, executor=None, progress=None) -> IngestSummary:
    """Ingest SAE folders/files with reading and indexing on `executor`; the driver stores them."""
    from atlas_ingest.executors import InProcess

    executor = executor or InProcess()
    summary = IngestSummary()
    t0 = time.perf_counter()
    items = tuple(sorted((k, v) for k, v in (overrides or {}).items() if v is not None))
    for p in paths:  # the run record and the atlas store paths as UTF-8 text
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:
            raise SAEError(f"{ascii(str(p))[1:-1]}: path is not valid UTF-8; rename it") from None
    params = {"paths": [str(p) for p in paths], "overrides": dict(items), "replace": replace, "executor": executor.name}
    with atlas.write() as w, record_run(w, "ingest", params):
        if fmt == "release" and not replace:  # a release's SAE never changes under its name: skip, don't download
            stored = dict(w.con.execute("SELECT source, sae_id FROM saes WHERE format = 'release'").fetchall())
            for name in [p for p in map(str, paths) if p in stored]:
                summary.unchanged.append(stored[name])
                if progress:
                    progress(stored[name], "unchanged")
            paths = [p for p in paths if str(p) not in stored]
        tasks = [IngestTask(str(p), fmt, items, factory) for p in paths]
        for prepared in executor.map(run_ingest, tasks, str(w.atlas.index_dir)):
            status = _known(w, prepared.meta, by_hash=not replace) or commit_sae(w, prepared, replace)
            _count(summary, prepared.meta, status, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _count(summary: IngestSummary, meta: SAEMeta, status: str, progress) -> None:
    getattr(summary, status).append(meta.sae_id)
    if status in ("added", "replaced"):
        summary.features += meta.d_sae
    if progress:
        progress(meta.sae_id, status)


# Metadata a second route may know when the first did not (a release knows its Neuronpedia id, a
# folder its run); filled where the stored row has NULL, never overwritten.
MERGED_COLUMNS = ("neuronpedia_id", "release", "variant", "l0", "hook_out", "d_out")


def _known(w: Writer, m: SAEMeta, by_hash: bool = True) -> str | None:
    """'unchanged' / 'merged' when these weights are already stored (by id, or by hash under another id
    unless --replace asks for this id), after filling that row's missing metadata from `m`; None when new."""
    row = w.con.execute("SELECT sae_id FROM saes WHERE sha256 = ? AND (? OR sae_id = ?) "
                        "ORDER BY sae_id = ? DESC, created_at LIMIT 1", [m.sha256, by_hash, m.sae_id, m.sae_id]).fetchone()
    if row is None:
        return None
    w.update_sae(row[0], {c: getattr(m, c) for c in MERGED_COLUMNS}, only_missing=True)
    if row[0] == m.sae_id:
        return "unchanged"
    m.sae_id = row[0]  # reported under the id it is stored as
    return "merged"


def commit_sae(w: Writer, p: Prepared, replace: bool) -> str:
    """Store a prepared SAE in one transaction, after the checks against what the atlas holds."""
    m = p.meta
    old = w.con.execute("SELECT sha256 FROM saes WHERE sae_id = ?", [m.sae_id]).fetchone()
    if old and not replace:
        raise SAEError(f"{m.source}: SAE id {m.sae_id!r} is already in the atlas with other weights "
                       f"(sha256 {old[0][:12]}… vs {m.sha256[:12]}…); pass --replace or choose another --id")
    other = w.con.execute("SELECT sae_id, coalesce(d_out, d_in) FROM saes WHERE stack = ? AND coalesce(d_out, d_in) <> ? "
                          "AND sae_id <> ? LIMIT 1", [m.stack, m.d_out or m.d_in, m.sae_id]).fetchone()
    if other:
        what = "d_in" if m.kind == "sae" else "d_out"
        raise SAEError(f"{m.source}: {what} {m.d_out or m.d_in} differs from {other[0]} ({what} {other[1]}) "
                       f"in stack {m.stack}")
    row = {c: getattr(m, c) for c in SAE_COLUMNS if c not in ("format", "index_file", "index_factory", "created_at")}
    row |= {"format": m.fmt, "index_file": p.index_file, "index_factory": p.factory}
    w.put_sae(row, p.features, replace=bool(old))
    return "replaced" if old else "added"


def feature_rows(rec: SAERecord) -> pa.Table:
    w, n = rec.weights, rec.meta.d_sae
    log_density = rec.meta.extra.get("log_density")
    return pa.table({
        "sae_id": pa.array([rec.meta.sae_id] * n, pa.string()),
        "feature": pa.array(np.arange(n), pa.int32()),
        "dec_norm": pa.array(fx.row_norms(w.W_dec), pa.float32()),  # no float32 squares: docs/design.md, Ingest refusals
        "threshold": pa.array(w.threshold, pa.float32()) if w.threshold is not None else pa.nulls(n, pa.float32()),
        "density": (pa.array(np.power(10.0, log_density), pa.float32()) if log_density is not None
                    else pa.nulls(n, pa.float32())),
    })


def set_neuronpedia_id(atlas: Atlas, sae_id: str, neuronpedia_id: str | None) -> None:
    """Set (or clear) an SAE's Neuronpedia id: `modelId/sourceId`."""
    if neuronpedia_id is not None and (neuronpedia_id.count("/") != 1 or not all(neuronpedia_id.split("/"))):
        raise SAEError(f"neuronpedia id {neuronpedia_id!r}: expected modelId/sourceId, "
                       f"e.g. gemma-2-2b/20-gemmascope-res-16k")
    with atlas.write() as w, record_run(w, "saes-set", {"sae_id": sae_id, "neuronpedia_id": neuronpedia_id}):
        require_saes({r[0] for r in w.con.execute("SELECT sae_id FROM saes").fetchall()}, [sae_id])
        w.update_sae(sae_id, {"neuronpedia_id": neuronpedia_id})


def reroot(atlas: Atlas, old: Path, new: Path) -> int:
    """Point every file source under `old` to the same relative path under `new`; all or nothing, and
    only where the new path exists (weights are re-checked against their hash when next read)."""
    old_s, new = str(Path(old).absolute()).rstrip("/"), Path(new).resolve()
    with atlas.write() as w, record_run(w, "reroot", {"old": old_s, "new": str(new)}):
        rows = w.con.execute("SELECT sae_id, source FROM saes WHERE format <> 'release' AND "
                             "(source = ? OR starts_with(source, ?))", [old_s, old_s + "/"]).fetchall()
        if not rows:
            raise SAEError(f"{old_s}: no SAE source lies under this folder; see `atlas info SAE` for sources")
        moved = [(str(new / Path(src).relative_to(old_s)), sid) for sid, src in rows]
        missing = [src for src, _ in moved if not Path(src).exists()]
        if missing:
            raise SAEError(f"{missing[0]}: not found after re-rooting ({len(missing)} of {len(moved)} missing); "
                           f"nothing changed")
        with w.transaction():
            for src, sid in moved:
                w.update_sae(sid, {"source": src})
    return len(rows)


def check_table_files(atlas: Atlas) -> None:
    """SAEError when the catalog names table files its atlas folder does not hold (a DuckDB file copied
    without its .files/ folder): no job, migrate included, can rebuild them."""
    import duckdb

    con = duckdb.connect(str(atlas.path), read_only=True)
    try:
        # a version-4 atlas (or one whose migration was killed) has no catalog yet: nothing to check
        has_parts = bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'parts'").fetchone()[0])
        files = [r[0] for r in con.execute("SELECT file FROM parts").fetchall()] if has_parts else []
    finally:
        con.close()
    missing = [f for f in files if not (atlas.tables_dir / f).exists()]
    if missing:
        raise SAEError(f"{atlas.path}: {len(missing)} of its {len(files)} table files are not in {atlas.tables_dir} "
                       f"(an atlas is the DuckDB file and its {atlas.dir.name}/ folder: copy them together)")
