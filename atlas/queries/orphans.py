"""Orphan features across seeds (Paulo & Belrose 2025).

Between two siblings, feature i is *shared* when the decoder_cos assignment and the encoder_cos
assignment pick the same counterpart and both cosines are ≥ tau; otherwise it is unpaired there. With
k siblings a feature is "shared in n of k−1"; an orphan is shared in none. The SQL macro
`feature_sharing(sae_, tau_, by_)` (atlas.store.schema) computes it; this module wraps it.
"""

from __future__ import annotations

from ..errors import QueryError
from ..methods import SIBLING_METHODS, Threshold
from .common import top_tokens
from .computed import require
from .records import FeatureSharing, Orphans

BY = ("any", "seed", "dataset")


def sharing_tau(tau: float | None = None) -> float:
    """The sharing rule's cosine threshold, checked (default: the sibling methods' own, 0.7)."""
    return Threshold.of(SIBLING_METHODS[0], tau, per_pair=False).tau


def feature_sharing(snap, sae_id: str, tau: float | None = None, by: str = "any") -> list[FeatureSharing]:
    snap.sae(sae_id)
    if by not in BY:
        raise QueryError(f"by must be any, seed or dataset, got {by!r}")
    return snap.records(FeatureSharing, "SELECT * FROM feature_sharing(?, tau_ := ?, by_ := ?)",
                        [sae_id, sharing_tau(tau), by])


def sibling_ids(snap, sae_id: str) -> list[str]:
    return [r[0] for r in snap.execute("SELECT sae_id FROM siblings(?) ORDER BY 1", [sae_id]).fetchall()]


def orphans(snap, sae_id: str, tau: float | None = None, min_siblings: int = 1, by: str = "any") -> Orphans:
    """Features of `sae_id` shared with none of its matched siblings (needs ≥ min_siblings matched); NotComputed
    when it has siblings but none was matched."""
    sharing = feature_sharing(snap, sae_id, tau, by)
    n_sib = sharing[0].n_siblings if sharing else 0
    siblings = sibling_ids(snap, sae_id)
    require(snap, "siblings", sae=sae_id, by=by)
    lonely = [s for s in sharing if s.n_shared == 0] if n_sib >= min_siblings else []
    tokens = top_tokens(snap, [sae_id] * len(lonely), [s.feature for s in lonely]) if lonely else {}
    for s in lonely:  # the raw top tokens beside the label (docs/design.md, Labels)
        s.top_tokens = tokens.get((sae_id, s.feature))
    return Orphans(sae_id=sae_id, siblings=siblings, n_features=len(sharing), n_orphans=len(lonely),
                   orphan_frac=len(lonely) / len(sharing) if sharing else 0.0, orphans=lonely)
