"""Orphan features across seeds (Paulo & Belrose 2025).

Between two siblings, feature i is *shared* when the decoder_cos assignment and the encoder_cos
assignment pick the same counterpart and both cosines are ≥ tau; otherwise it is unpaired there. With
k siblings a feature is "shared in n of k−1"; an orphan is shared in none. The SQL macro
`feature_sharing(sae_, tau_, by_)` (atlas.store.schema) computes it; this module wraps it.
"""

from __future__ import annotations

from .common import check_fraction, sae_row, top_tokens
from .computed import require_siblings_matched
from .records import FeatureSharing, Orphans
from ..errors import QueryError


def feature_sharing(con, sae_id: str, tau: float = 0.7, by: str = "any") -> list[FeatureSharing]:
    sae_row(con, sae_id)
    check_fraction("tau", tau, -1, 1)
    if by not in ("any", "seed", "dataset"):
        raise QueryError(f"by must be any, seed or dataset, got {by!r}")
    rows = con.execute("SELECT * FROM feature_sharing(?, tau_ := ?, by_ := ?)", [sae_id, tau, by]).fetchall()
    return [FeatureSharing(*r) for r in rows]


def sibling_ids(con, sae_id: str) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT s.sae_id FROM saes s, (SELECT * FROM saes WHERE sae_id = ?) me WHERE s.model = me.model "
        "AND s.hook = me.hook AND s.d_sae = me.d_sae AND s.sae_id <> me.sae_id ORDER BY 1", [sae_id]).fetchall()]


def orphans(con, sae_id: str, tau: float = 0.7, min_siblings: int = 1, by: str = "any") -> Orphans:
    """Features of `sae_id` shared with none of its matched siblings (needs ≥ min_siblings matched); NotComputed
    when it has siblings but none was matched."""
    sharing = feature_sharing(con, sae_id, tau, by)
    n_sib = sharing[0].n_siblings if sharing else 0
    siblings = sibling_ids(con, sae_id)
    require_siblings_matched(con, sae_id, by)
    lonely = [s for s in sharing if s.n_shared == 0] if n_sib >= min_siblings else []
    tokens = top_tokens(con, [sae_id] * len(lonely), [s.feature for s in lonely]) if lonely else {}
    for s in lonely:  # the raw top tokens beside the label (docs/design.md, Labels)
        s.top_tokens = tokens.get((sae_id, s.feature))
    return Orphans(sae_id=sae_id, siblings=siblings, n_features=len(sharing), n_orphans=len(lonely),
                   orphan_frac=len(lonely) / len(sharing) if sharing else 0.0, orphans=lonely)
