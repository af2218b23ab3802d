"""Nearest features to a vector or to a feature, across any SAEs of the same width, via FAISS."""

from __future__ import annotations

import threading

import msgspec
import numpy as np

from .. import index as fx
from .. import budget
from .common import check_feature, sae_row
from ..errors import NotFound, QueryError


class Hit(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    score: float
    label: str | None = None


class IndexCache:
    """FAISS indexes loaded once per process, keyed by file name (names change when weights do)."""

    def __init__(self, index_dir):
        self.index_dir, self.items, self.lock = index_dir, {}, threading.Lock()

    def get(self, index_file: str):
        with self.lock:
            if index_file not in self.items:
                self.items[index_file] = fx.load(self.index_dir / index_file)
            return self.items[index_file]


def feature_vector(cache: IndexCache, con, sae_id: str, feature: int) -> np.ndarray:
    sae = sae_row(con, sae_id)
    check_feature(sae, feature)
    return cache.get(sae["index_file"]).reconstruct(int(feature))[None, :]


def nearest(cache: IndexCache, con, vector=None, sae_id: str | None = None, feature: int | None = None,
            k: int = 10, saes: list[str] | None = None) -> list[Hit]:
    """The k most cosine-similar features to `vector` or to (sae_id, feature) in `saes` (default: all SAEs
    of that width; the query feature itself is left out)."""
    if not 1 <= k <= 1000:
        raise QueryError(f"k must be between 1 and 1000, got {k}")
    if vector is not None and (sae_id is not None or feature is not None):
        raise QueryError("give a vector, or an sae_id and a feature, not both")
    if vector is None:
        if sae_id is None or feature is None:
            raise QueryError("give a vector, or an sae_id and a feature")
        q = feature_vector(cache, con, sae_id, feature)
    else:
        v = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        if not np.isfinite(v).all() or not v.any():
            raise QueryError("vector must be finite and non-zero")
        v = v / np.abs(v).max()  # in float64 first: any finite non-zero vector has a float32 direction (1e-263 too)
        q = (v / np.linalg.norm(v)).astype(np.float32)
    rows = con.execute("SELECT sae_id, layer, index_file, d_in FROM saes WHERE d_in = ? "
                       "AND (? IS NULL OR sae_id IN (SELECT unnest(?))) ORDER BY sae_id",
                       [q.shape[1], saes, saes or []]).fetchall()
    if not rows:
        raise NotFound(f"no SAE of width d_in={q.shape[1]}" + (f" among {saes}" if saes else ""))
    hits = []
    for sid, layer, index_file, _ in rows:
        budget.check("search")
        scores, ids = fx.search(cache.get(index_file), q, k + 1)
        hits += [(float(s), sid, int(i), layer) for s, i in zip(scores[0], ids[0])
                 if i >= 0 and not (sid == sae_id and i == feature)]
    hits.sort(key=lambda h: -h[0])
    top = hits[:k]
    labels = dict(((s, f), lab) for s, f, lab in con.execute(
        "SELECT sae_id, feature, label FROM features WHERE label IS NOT NULL AND (sae_id, feature) IN "
        "(SELECT (unnest(?), unnest(?)))", [[h[1] for h in top], [h[2] for h in top]]).fetchall()) if top else {}
    return [Hit(sae_id=s, feature=f, layer=layer, score=score, label=labels.get((s, f))) for score, s, f, layer in top]
