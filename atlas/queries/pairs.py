"""Layer pairs of a stack: permutation-only pairs and layer × layer matrices for heatmaps.

A pair (a, b) is permutation-only when its assignment matches ≥ min_frac of a's features with score
≥ min_score: b is a relabelling of a with small changes. SQL: the macros `permutation_pairs(...)` and
`layer_pair_stats(...)` of atlas.store.schema, which this module calls.
"""

from __future__ import annotations

from ..methods import SIMILARITY_METHODS
from .common import check_fraction, check_method, check_tau, stack_saes
from .records import LayerPair, QueryError

STATS = ("matched_frac", "mean_score", "median_score", "mse_after_perm", "identity_frac", "frac_at_min_score")


def layer_pairs(con, stack: str | None = None, method: str = "decoder_cos", min_frac: float = 0.9,
                min_score: float = 0.9, permutation_only: bool = False) -> list[LayerPair]:
    """Matched layer pairs of a stack (or all stacks) with their stats. For a distance method (MSE) there is
    no score bar, so frac_at_min_score is None and no pair is permutation-only."""
    m = check_method(method)
    check_fraction("min_frac", min_frac)
    if not m.is_distance:  # distances have no score bar: min_score is not used, so any value is accepted
        check_tau(m, min_score, "min_score")
    if stack is not None:
        stack_saes(con, stack)
    if m.is_distance:
        if permutation_only:  # defined on a score bar, which distances do not have
            return []
        rows = con.execute(
            "SELECT sae_a, sae_b, layer_a, layer_b, method, n_a, n_b, n_matched, matched_frac, NULL, mean_score, "
            "median_score, mse_after_perm, identity_frac, false FROM layer_pairs WHERE (? IS NULL OR stack = ?) "
            "AND method = ? ORDER BY stack, layer_a, layer_b", [stack, stack, method]).fetchall()
        return [LayerPair(*r) for r in rows]
    rows = con.execute("SELECT * FROM layer_pair_stats(method_ := ?, min_frac_ := ?, min_score_ := ?, stack_ := ?)",
                       [method, min_frac, min_score, stack]).fetchall()
    pairs = [LayerPair(*r) for r in rows]
    return [p for p in pairs if p.permutation_only] if permutation_only else pairs


def permutation_pairs(con, stack: str | None = None, min_frac: float = 0.9, min_score: float = 0.9,
                      method: str = "decoder_cos") -> list[LayerPair]:
    return layer_pairs(con, stack, method, min_frac, min_score, permutation_only=True)


def pair_matrix(con, stack: str, method: str = "decoder_cos", stat: str = "matched_frac",
                min_score: float = 0.9) -> dict:
    """{layers, values[i][j]} with values[i][j] the stat of pair (layer i, layer j), None where unmatched."""
    if stat not in STATS:
        raise QueryError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
    m = check_method(method)
    layers = [layer for _, layer in stack_saes(con, stack)]
    pos = {layer: i for i, layer in enumerate(layers)}
    values: list[list[float | None]] = [[None] * len(layers) for _ in layers]
    pairs = layer_pairs(con, stack, method, 0.0, min_score if not m.is_distance else 0.0)
    for p in pairs:
        v = getattr(p, stat)
        values[pos[p.layer_a]][pos[p.layer_b]] = v
        values[pos[p.layer_b]][pos[p.layer_a]] = v
    return {"stack": stack, "method": method, "stat": stat, "layers": layers, "values": values}


def birth_death(con, stack: str, method: str = "decoder_cos", tau: float = 0.7) -> list[dict]:
    """Per layer: features born (no assigned match ≥ tau from the layer before) and dying (none to the
    layer after); None where that pair was not matched. SQL: the macro `birth_death(stack_, ...)`."""
    m = check_method(method)
    if m.is_distance:
        raise QueryError(f"births and deaths are counted on similarity scores, not {method}; "
                         f"use {', '.join(SIMILARITY_METHODS[:-1])} or {SIMILARITY_METHODS[-1]}")
    check_tau(m, tau)
    stack_saes(con, stack)
    cur = con.execute("SELECT * FROM birth_death(?, method_ := ?, tau_ := ?)", [stack, method, tau])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def sibling_groups(con) -> list[dict]:
    """SAEs of one model, hook and width (seeds and datasets side by side): where orphans are counted."""
    rows = con.execute("SELECT model, hook, d_sae, layer, list(sae_id ORDER BY dataset, seed) FROM saes "
                       "GROUP BY ALL HAVING count(*) > 1 ORDER BY model, layer, hook, d_sae").fetchall()
    return [{"model": m, "hook": h, "d_sae": d, "layer": layer, "saes": s} for m, h, d, layer, s in rows]


def find_features(con, text: str, limit: int = 50) -> list[dict]:
    """Features whose label contains `text` (case-insensitive)."""
    if not text.strip():
        raise QueryError("give some label text to look for")
    rows = con.execute("SELECT f.sae_id, f.feature, s.layer, f.label FROM features f JOIN saes s USING (sae_id) "
                       "WHERE f.label ILIKE '%' || ? || '%' ORDER BY s.stack, s.layer, f.feature LIMIT ?",
                       [text, limit]).fetchall()
    return [{"sae_id": s, "feature": f, "layer": layer, "label": lab} for s, f, layer, lab in rows]
