"""Layer pairs of a stack: permutation-only pairs, layer × layer matrices for heatmaps, births and deaths, a
pair's matches.

A pair (a, b) is permutation-only when its assignment matches ≥ min_frac of a's features with score
≥ min_score: b is a relabelling of a with small changes. SQL: the macros `permutation_pairs(...)` and
`layer_pair_stats(...)` of atlas.store.schema, which this module calls.
"""

from __future__ import annotations

from ..methods import SIMILARITY_METHODS
from .common import check_fraction, check_method, check_tau, sae_row, stack_saes
from .computed import require
from .edges import FileEdges
from .records import LayerFlow, LayerPair, Matrix, PairMatch
from ..errors import QueryError

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
        require(con, "stack", method, stack=stack)
    else:
        require(con, "layer_pairs", method)
    if m.is_distance:
        if permutation_only:  # defined on a score bar, which distances do not have
            return []
        rows = con.execute(
            "SELECT sae_a, sae_b, layer_a, layer_b, method, n_a, n_b, n_matched, matched_frac, NULL, mean_score, "
            "median_score, mse_after_perm, identity_frac, false, stack FROM layer_pairs WHERE (? IS NULL OR stack = ?) "
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
                min_score: float = 0.9) -> Matrix:
    """Layers and values[i][j], the stat of pair (layer i, layer j), None where unmatched (for heatmaps)."""
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
    return Matrix(stack=stack, method=method, stat=stat, layers=layers, values=values)


def birth_death(con, stack: str, method: str = "decoder_cos", tau: float = 0.7) -> list[LayerFlow]:
    """Per layer: features born (no assigned match ≥ tau from the layer before) and dying (none to the
    layer after); None where that pair was not matched. SQL: the macro `birth_death(stack_, ...)`."""
    m = check_method(method)
    if m.is_distance:
        raise QueryError(f"births and deaths are counted on similarity scores, not {method}; "
                         f"use {', '.join(SIMILARITY_METHODS[:-1])} or {SIMILARITY_METHODS[-1]}")
    check_tau(m, tau)
    stack_saes(con, stack)
    require(con, "stack", method, stack=stack)
    rows = con.execute("SELECT layer, sae_id, d_sae, births, deaths FROM birth_death(?, method_ := ?, tau_ := ?)",
                       [stack, method, tau]).fetchall()
    return [LayerFlow(*r) for r in rows]


def pair_matches(con, sae_a: str, sae_b: str, method: str = "decoder_cos", limit: int = 100,
                 files: FileEdges | None = None) -> list[PairMatch]:
    """Assigned matches of one SAE pair, best first (read from the pair's own table file, not the view)."""
    saes = files.saes if files is not None else None
    sae_row(con, sae_a, saes), sae_row(con, sae_b, saes)
    order = check_method(method).sql_order
    paths = (files or FileEdges.of(con)).files_of("matches", [(sae_a, sae_b, method)])
    if not paths:
        require(con, "pair", method, a=sae_a, b=sae_b)
    rows = con.execute(f"SELECT feature_a, feature_b, score, rank FROM read_parquet(?, hive_partitioning = false) "
                       f"WHERE assigned ORDER BY score {order}, feature_a LIMIT ?", [paths[0], limit]).fetchall() if paths else []
    return [PairMatch(*r) for r in rows]
