"""Decoder directions from the snapshot's FAISS indexes: a feature's decoder row, and the nearest features to a
vector or to a feature across any SAEs of the same width."""

from __future__ import annotations

import msgspec
import numpy as np

from .. import budget
from .. import index as fx
from ..errors import NotFound, QueryError


class Hit(msgspec.Struct):
    sae_id: str
    feature: int
    layer: int
    score: float
    label: str | None = None


def unit_row(snap, sae_id: str, feature: int) -> np.ndarray:
    """[1, d_in]: the feature's unit decoder direction (its FAISS index stores unit rows)."""
    sae = snap.feature(sae_id, feature)
    if not sae["index_file"]:
        raise NotFound(f"{sae_id}: no decoder rows stored (re-ingest the SAE)")
    return snap.faiss.get(sae["index_file"]).reconstruct(int(feature))[None, :]


def decoder_rows(snap, sae_id: str, features: list[int]) -> np.ndarray:
    """[len(features), d_in] float32: W_dec rows of `features` (unit rows times the stored decoder norm)."""
    norms = dict(snap.execute("SELECT feature, dec_norm FROM features WHERE sae_id = ? AND feature IN "
                              "(SELECT unnest(?))", [sae_id, list(features)]).fetchall())
    if not features:
        return np.empty((0, snap.sae(sae_id)["d_in"]), np.float32)
    return np.concatenate([unit_row(snap, sae_id, f) * np.float32(norms.get(f, 0.0)) for f in features])


def nearest(snap, vector=None, sae_id: str | None = None, feature: int | None = None, k: int = 10,
            saes: list[str] | None = None) -> list[Hit]:
    """The k most cosine-similar features to `vector` or to (sae_id, feature) in `saes` (default: all SAEs
    of that width; the query feature itself is left out)."""
    if not 1 <= k <= 1000:
        raise QueryError(f"k must be between 1 and 1000, got {k}")
    if vector is not None and (sae_id is not None or feature is not None):
        raise QueryError("give a vector, or an sae_id and a feature, not both")
    if vector is None:
        if sae_id is None or feature is None:
            raise QueryError("give a vector, or an sae_id and a feature")
        q = unit_row(snap, sae_id, feature)
    else:
        v = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        if not np.isfinite(v).all() or not v.any():
            raise QueryError("vector must be finite and non-zero")
        v = v / np.abs(v).max()  # in float64 first: any finite non-zero vector has a float32 direction (1e-263 too)
        q = (v / np.linalg.norm(v)).astype(np.float32)
    rows = [(r["sae_id"], r["layer"], r["index_file"]) for _, r in sorted(snap.saes.items())
            if r["d_in"] == q.shape[1] and (saes is None or r["sae_id"] in saes)]
    if not rows:
        raise NotFound(f"no SAE of width d_in={q.shape[1]}" + (f" among {saes}" if saes else ""))
    hits = []
    for sid, layer, index_file in rows:
        budget.check("search")
        scores, ids = fx.search(snap.faiss.get(index_file), q, k + 1)
        hits += [(float(s), sid, int(i), layer) for s, i in zip(scores[0], ids[0])
                 if i >= 0 and not (sid == sae_id and i == feature)]
    hits.sort(key=lambda h: -h[0])
    top = hits[:k]
    labels = dict(((s, f), lab) for s, f, lab in snap.execute(
        "SELECT sae_id, feature, label FROM features WHERE label IS NOT NULL AND (sae_id, feature) IN "
        "(SELECT (unnest(?), unnest(?)))", [[h[1] for h in top], [h[2] for h in top]]).fetchall()) if top else {}
    return [Hit(sae_id=s, feature=f, layer=layer, score=score, label=labels.get((s, f))) for score, s, f, layer in top]
