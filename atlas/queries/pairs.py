"""Layer pairs of a stack: permutation-only pairs and layer × layer matrices for heatmaps.

A pair (a, b) is permutation-only when its assignment matches ≥ min_frac of a's features with score
≥ min_score: b is a relabelling of a with small changes. SQL: the macros `permutation_pairs(...)` and
`layer_pair_stats(...)` of atlas.store.schema, which this module calls.
"""

from __future__ import annotations

from .common import check_fraction, check_method, stack_saes
from .records import LayerPair, QueryError

STATS = ("matched_frac", "mean_score", "median_score", "mse_after_perm", "identity_frac", "frac_at_min_score")


def layer_pairs(con, stack: str | None = None, method: str = "decoder_cos", min_frac: float = 0.9,
                min_score: float = 0.9, permutation_only: bool = False) -> list[LayerPair]:
    check_method(method)
    if method.endswith("_mse"):
        raise QueryError("permutation-only pairs are defined on similarity scores; use decoder_cos or encoder_cos")
    check_fraction("min_frac", min_frac)
    check_fraction("min_score", min_score, -1, 1)
    if stack is not None:
        stack_saes(con, stack)
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
    check_method(method)
    layers = [layer for _, layer in stack_saes(con, stack)]
    pos = {layer: i for i, layer in enumerate(layers)}
    values: list[list[float | None]] = [[None] * len(layers) for _ in layers]
    if method.endswith("_mse") and stat == "frac_at_min_score":
        raise QueryError("frac_at_min_score needs a similarity method")
    pairs = (layer_pairs(con, stack, method, 0.0, min_score) if not method.endswith("_mse") else
             [LayerPair(*r, False) for r in con.execute(
                 "SELECT sae_a, sae_b, layer_a, layer_b, method, n_a, n_b, n_matched, matched_frac, NULL, mean_score, "
                 "median_score, mse_after_perm, identity_frac FROM layer_pairs WHERE stack = ? AND method = ?",
                 [stack, method]).fetchall()])
    for p in pairs:
        v = getattr(p, stat)
        values[pos[p.layer_a]][pos[p.layer_b]] = v
        values[pos[p.layer_b]][pos[p.layer_a]] = v
    return {"stack": stack, "method": method, "stat": stat, "layers": layers, "values": values}
