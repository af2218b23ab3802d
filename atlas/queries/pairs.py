"""Layer pairs of a stack: permutation-only pairs, layer × layer matrices for heatmaps, births and deaths, a
pair's matches.

A pair (a, b) is permutation-only when its assignment matches ≥ min_frac of a's features with score
≥ min_score: b is a relabelling of a with small changes. SQL: the macros `permutation_pairs(...)` and
`layer_pair_stats(...)` of atlas.store.schema, which this module calls.
"""

from __future__ import annotations

from ..errors import QueryError
from ..methods import DEFAULT, SIMILARITY_METHODS, Threshold
from ..methods import method as method_info
from .common import check_fraction
from .computed import require
from .records import LayerFlow, LayerPair, Matrix, PairMatch

STATS = ("matched_frac", "mean_score", "median_score", "mse_after_perm", "identity_frac", "frac_at_min_score")


def layer_pairs(snap, stack: str | None = None, method: str = DEFAULT, min_frac: float = 0.9,
                min_score: float = 0.9, permutation_only: bool = False) -> list[LayerPair]:
    """Matched layer pairs of a stack (or all stacks) with their stats. For a distance method (MSE) there is
    no score bar, so frac_at_min_score is None and no pair is permutation-only."""
    m = method_info(method)
    check_fraction("min_frac", min_frac)
    if not m.is_distance:  # distances have no score bar: min_score is not used, so any value is accepted
        Threshold.of(m, min_score, per_pair=False)
    if stack is not None:
        snap.stack(stack)
        require(snap, "stack", method, stack=stack)
    else:
        require(snap, "layer_pairs", method)
    if m.is_distance:
        if permutation_only:  # defined on a score bar, which distances do not have
            return []
        return snap.records(
            LayerPair, "SELECT sae_a, sae_b, layer_a, layer_b, method, n_a, n_b, n_matched, matched_frac, NULL AS "
            "frac_at_min_score, mean_score, median_score, mse_after_perm, identity_frac, false AS permutation_only, "
            "stack FROM layer_pairs WHERE (? IS NULL OR stack = ?) AND method = ? ORDER BY stack, layer_a, layer_b",
            [stack, stack, method])
    pairs = snap.records(LayerPair, "SELECT * FROM layer_pair_stats(method_ := ?, min_frac_ := ?, min_score_ := ?, "
                         "stack_ := ?)", [method, min_frac, min_score, stack])
    return [p for p in pairs if p.permutation_only] if permutation_only else pairs


def permutation_pairs(snap, stack: str | None = None, min_frac: float = 0.9, min_score: float = 0.9,
                      method: str = DEFAULT) -> list[LayerPair]:
    return layer_pairs(snap, stack, method, min_frac, min_score, permutation_only=True)


def pair_matrix(snap, stack: str, method: str = DEFAULT, stat: str = "matched_frac",
                min_score: float = 0.9) -> Matrix:
    """Layers and values[i][j], the stat of pair (layer i, layer j), None where unmatched (for heatmaps)."""
    if stat not in STATS:
        raise QueryError(f"stat must be one of {', '.join(STATS)}, got {stat!r}")
    m = method_info(method)
    layers = [layer for _, layer in snap.stack(stack)]
    pos = {layer: i for i, layer in enumerate(layers)}
    values: list[list[float | None]] = [[None] * len(layers) for _ in layers]
    pairs = layer_pairs(snap, stack, method, 0.0, min_score if not m.is_distance else 0.0)
    for p in pairs:
        v = getattr(p, stat)
        values[pos[p.layer_a]][pos[p.layer_b]] = v
        values[pos[p.layer_b]][pos[p.layer_a]] = v
    return Matrix(stack=stack, method=method, stat=stat, layers=layers, values=values)


def birth_death(snap, stack: str, threshold: Threshold | None = None) -> list[LayerFlow]:
    """Per layer: features born (no assigned match passing `threshold` from the layer before) and dying (none to the
    layer after); None where that pair was not matched. SQL: the macro `birth_death(stack_, ...)`."""
    threshold = threshold or Threshold.of()
    method = threshold.method.name
    if threshold.method.is_distance or threshold.quantile is not None:
        raise QueryError(f"births and deaths are counted at a tau on similarity scores, not {threshold.label} of {method}; "
                         f"use {', '.join(SIMILARITY_METHODS[:-1])} or {SIMILARITY_METHODS[-1]}")
    snap.stack(stack)
    require(snap, "stack", method, stack=stack)
    return snap.records(LayerFlow, "SELECT layer, sae_id, d_sae, births, deaths FROM birth_death(?, method_ := ?, "
                        "tau_ := ?)", [stack, method, threshold.tau])


def pair_matches(snap, sae_a: str, sae_b: str, method: str = DEFAULT, limit: int = 100) -> list[PairMatch]:
    """Assigned matches of one SAE pair, best first (read from the pair's own table file, not the view)."""
    snap.sae(sae_a), snap.sae(sae_b)
    order = method_info(method).sql_order
    paths = snap.edges.files_of("matches", [(sae_a, sae_b, method)])
    if not paths:
        require(snap, "pair", method, a=sae_a, b=sae_b)
        return []
    return snap.records(PairMatch, "SELECT feature_a, feature_b, score, rank FROM read_parquet(?, hive_partitioning = "
                        "false) WHERE assigned ORDER BY score " + order + ", feature_a LIMIT ?", [paths[0], limit])
