"""FAISS index per SAE over its unit-normalised decoder rows (inner product = cosine).

Exact `Flat` by default; an approximate factory string ("HNSW32", "IVF4096,Flat") for very wide SAEs.
The GPU is used when faiss sees one; indexes always go back to the CPU before they are written.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import numpy as np

APPROX_FROM = 262_144  # features; at and above this width the default index is approximate
APPROX_FACTORY = "HNSW32"


@functools.cache
def faiss():
    import faiss as _faiss

    return _faiss


@functools.cache
def gpu_count() -> int:
    """Asked once: faiss-gpu imports and runs on CPU when there is no GPU."""
    get = getattr(faiss(), "get_num_gpus", None)
    return int(get()) if get else 0


def default_factory(n: int) -> str:
    return "Flat" if n < APPROX_FROM else APPROX_FACTORY


NORM_BLOCK = 1 << 22  # entries per block of row_norms: its float64 temporaries stay at 32 MB for any SAE


def row_norms(x: np.ndarray) -> np.ndarray:
    """[n] float64 Euclidean norms of the rows of x [n, d], right for any finite float32 rows: each row is
    scaled by its largest |entry| before squaring, so no square overflows (entries of 1e20) or underflows
    (1e-30, subnormals), where np.linalg.norm in float32 gives inf or 0 (docs/design.md, Ingest refusals).
    Entries below 1e-19 of their row's largest still vanish when squared: far under float32's precision."""
    out = np.zeros(len(x), np.float64)
    if x.ndim != 2 or not x.shape[1]:
        return out
    step = max(1, NORM_BLOCK // x.shape[1])
    for s in range(0, len(x), step):
        blk = x[s:s + step]
        scale = np.maximum(blk.max(axis=1), -blk.min(axis=1))
        y = blk / np.where(scale > 0, scale, 1)[:, None]  # largest entry ±1: its square is 1
        out[s:s + step] = scale.astype(np.float64) * np.sqrt(np.einsum("ij,ij->i", y, y).astype(np.float64))
    return out


def unit_rows(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Rows of x scaled to unit length in `dtype` (all-zero rows stay zero), for any finite float32 rows."""
    x = np.ascontiguousarray(x, dtype=dtype)
    n = row_norms(x)
    out = np.empty_like(x)
    np.divide(x, np.where(n > 0, n, 1.0)[:, None], out=out, casting="unsafe")
    return out


def build(vectors: np.ndarray, factory: str | None = None):
    """An inner-product index over unit rows of `vectors` [n, d]."""
    f = faiss()
    x = unit_rows(vectors)
    factory = factory or default_factory(len(x))
    index = f.index_factory(x.shape[1], factory, f.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def save(index, path: Path, factory: str) -> None:
    """Write atomically (parts.write_atomic), so a killed job never leaves a half-written index."""
    from .store.parts import write_atomic  # here: the store's snapshots hold this module's IndexCache

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: faiss().write_index(index, str(tmp)))
    path.with_suffix(".json").write_text(json.dumps({"factory": factory, "ntotal": index.ntotal, "d": index.d}))


def load(path: Path):
    if not path.exists():
        raise FileNotFoundError(f"FAISS index {path} is missing: re-ingest the SAE to rebuild it")
    return faiss().read_index(str(path))


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) of unit `queries` [m, d]; on the GPU when there is one."""
    f = faiss()
    if gpu_count() > 0 and hasattr(f, "index_cpu_to_all_gpus"):
        index = f.index_cpu_to_all_gpus(index)
    if "HNSW" in type(index).__name__:
        index.hnsw.efSearch = max(index.hnsw.efSearch, 2 * k)
    return index.search(unit_rows(queries), min(k, index.ntotal))


class IndexCache:
    """The FAISS indexes of an atlas's folder, each loaded on first use and kept, keyed by file name (the name
    holds the weights' hash, so an entry never goes stale and snapshots can share one cache)."""

    def __init__(self, index_dir: Path):
        self.index_dir, self.items, self.lock = Path(index_dir), {}, threading.Lock()

    def get(self, index_file: str):
        with self.lock:
            if index_file not in self.items:
                self.items[index_file] = load(self.index_dir / index_file)
            return self.items[index_file]
