"""Ingest job: validated SAEs into the atlas (saes + features rows) with a FAISS index each."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas import index as fx
from atlas.sae import SAEError, SAEMeta, SAERecord
from atlas.store import Atlas, Writer, record_run

DEPENDENT_TABLES = (("matches", "sae_a", "sae_b"), ("pair_stats", "sae_a", "sae_b"),
                    ("correlations", "sae_a", "sae_b"), ("compositions", "sae_a", "sae_b"),
                    ("examples", "sae_id", "sae_id"), ("training", "sae_id", "sae_id"))


@dataclass
class IngestSummary:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
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
            status = "unchanged" if _unchanged(w, rec.meta) else commit_sae(w, prepare(rec, w.atlas.index_dir, factory),
                                                                             replace)
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
    from ingest.sources import read_sae

    rec = read_sae(task.path, fmt=task.fmt, **dict(task.overrides))
    return prepare(rec, Path(index_dir), task.factory)


def ingest_paths(atlas: Atlas, paths: list[Path], overrides: dict | None = None, fmt: str | None = None,
                 replace: bool = False, factory: str | None = None, executor=None, progress=None) -> IngestSummary:
    """Ingest SAE folders/files with reading and indexing on `executor`; the driver stores them."""
    from ingest.executors import InProcess

    executor = executor or InProcess()
    summary = IngestSummary()
    t0 = time.perf_counter()
    items = tuple(sorted((k, v) for k, v in (overrides or {}).items() if v is not None))
    tasks = [IngestTask(str(p), fmt, items, factory) for p in paths]
    params = {"paths": [str(p) for p in paths], "overrides": dict(items), "replace": replace, "executor": executor.name}
    with atlas.write() as w, record_run(w, "ingest", params):
        for prepared in executor.map(run_ingest, tasks, str(w.atlas.index_dir)):
            status = "unchanged" if _unchanged(w, prepared.meta) else commit_sae(w, prepared, replace)
            _count(summary, prepared.meta, status, progress)
    summary.seconds = time.perf_counter() - t0
    return summary


def _count(summary: IngestSummary, meta: SAEMeta, status: str, progress) -> None:
    getattr(summary, status).append(meta.sae_id)
    if status != "unchanged":
        summary.features += meta.d_sae
    if progress:
        progress(meta.sae_id, status)


def _unchanged(w: Writer, m: SAEMeta) -> bool:
    old = w.con.execute("SELECT sha256 FROM saes WHERE sae_id = ?", [m.sae_id]).fetchone()
    return bool(old) and old[0] == m.sha256


def commit_sae(w: Writer, p: Prepared, replace: bool) -> str:
    """Store a prepared SAE in one transaction, after the checks against what the atlas holds."""
    m = p.meta
    old = w.con.execute("SELECT sha256 FROM saes WHERE sae_id = ?", [m.sae_id]).fetchone()
    if old and not replace:
        raise SAEError(f"{m.source}: SAE id {m.sae_id!r} is already in the atlas with other weights "
                       f"(sha256 {old[0][:12]}… vs {m.sha256[:12]}…); pass --replace or choose another --id")
    other = w.con.execute("SELECT sae_id, d_in FROM saes WHERE stack = ? AND d_in <> ? AND sae_id <> ? LIMIT 1",
                          [m.stack, m.d_in, m.sae_id]).fetchone()
    if other:
        raise SAEError(f"{m.source}: d_in {m.d_in} differs from {other[0]} (d_in {other[1]}) in stack {m.stack}")
    with w.transaction() as con:
        if old:
            for table, col_a, col_b in DEPENDENT_TABLES:
                con.execute(f"DELETE FROM {table} WHERE {col_a} = ? OR {col_b} = ?", [m.sae_id, m.sae_id])
            con.execute("DELETE FROM features WHERE sae_id = ?", [m.sae_id])
            con.execute("DELETE FROM saes WHERE sae_id = ?", [m.sae_id])
        con.execute(
            "INSERT INTO saes (sae_id, model, hook, site, layer, d_in, d_sae, arch, k, seed, dataset, stack, source, "
            "format, sha256, neuronpedia_id, index_file, index_factory) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [m.sae_id, m.model, m.hook, m.site, m.layer, m.d_in, m.d_sae, m.arch, m.k, m.seed, m.dataset, m.stack,
             m.source, m.fmt, m.sha256, m.neuronpedia_id, p.index_file, p.factory])
        w.insert_arrow("features", p.features)
    return "replaced" if old else "added"


def feature_rows(rec: SAERecord) -> pa.Table:
    w, n = rec.weights, rec.meta.d_sae
    log_density = rec.meta.extra.get("log_density")
    return pa.table({
        "sae_id": pa.array([rec.meta.sae_id] * n, pa.string()),
        "feature": pa.array(np.arange(n), pa.int32()),
        "dec_norm": pa.array(np.linalg.norm(w.W_dec, axis=1), pa.float32()),
        "threshold": pa.array(w.threshold, pa.float32()) if w.threshold is not None else pa.nulls(n, pa.float32()),
        "density": (pa.array(np.power(10.0, log_density), pa.float32()) if log_density is not None
                    else pa.nulls(n, pa.float32())),
    })
