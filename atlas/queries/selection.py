"""Which SAE pairs a job compares: layer neighbours of a stack, siblings, widths, flow, or a given list
(docs/design.md, Words: stack, siblings). Reads only the saes table, so the CLI lists the choices without
loading a job."""

from __future__ import annotations

from .common import require_saes

SELECTIONS = ("adjacent", "distance", "siblings", "widths", "flow", "list")


def select_pairs(con, selection: str = "adjacent", distance: int = 1, stack: str | None = None,
                 pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(sae_a, sae_b) pairs, earlier layer first: adjacent layers, all pairs within `distance` layers of
    a stack, siblings (same model, hook and width; other seed, dataset or variant such as L0), widths (same model,
    hook, seed and dataset; each width with the next larger one, narrow first), flow (MLP/attention-out SAEs
    with the residual SAE of their layer, for feature-flow origins), or an explicit list."""
    if selection == "list":
        require_saes({r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}, (s for p in pairs or [] for s in p))
        return list(pairs or [])
    if selection in ("adjacent", "distance"):
        sql = """
            WITH s AS (SELECT sae_id, stack, layer,
                              dense_rank() OVER (PARTITION BY stack ORDER BY layer) AS pos FROM saes
                       WHERE ? IS NULL OR stack = ?)
            SELECT a.sae_id, b.sae_id FROM s a JOIN s b ON a.stack = b.stack
            WHERE b.pos > a.pos AND b.pos - a.pos <= ?
            ORDER BY a.stack, b.pos - a.pos, a.layer"""
        # adjacent = neighbours among the layers the stack has, so a stack with gaps still chains
        return [tuple(r) for r in con.execute(sql, [stack, stack, 1 if selection == "adjacent" else distance]).fetchall()]
    if selection == "siblings":
        sql = """
            SELECT p.sae_a, p.sae_b FROM sibling_pairs() p JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b
            WHERE p.sae_a < p.sae_b
              AND (p.relation <> 'variant' OR a.variant IS DISTINCT FROM b.variant)  -- other sparsity (Gemma Scope L0s)
              AND (? IS NULL OR a.stack = ? OR b.stack = ?)
            ORDER BY a.layer, a.sae_id, b.sae_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    if selection == "flow":  # MLP-out / attention-out SAEs against the residual SAE of their layer
        sql = """
            SELECT x.sae_id, r.sae_id FROM saes x JOIN saes r
              ON x.model = r.model AND x.layer = r.layer AND x.d_in = r.d_in AND x.site IN ('mlp', 'attn')
             AND r.site = 'resid' AND x.seed IS NOT DISTINCT FROM r.seed AND x.dataset IS NOT DISTINCT FROM r.dataset
            WHERE ? IS NULL OR r.stack = ? OR x.stack = ?
            ORDER BY r.layer, x.site, r.sae_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    if selection == "widths":  # each SAE with the next larger width; among several (L0 variants) the nearest L0
        sql = """
            WITH s AS (SELECT *, coalesce(kind, 'sae') AS kind_ FROM saes),
            pairs AS (SELECT a.sae_id AS a_id, a.layer, a.d_sae AS d_a, b.sae_id AS b_id, b.d_sae AS d_b,
                             a.stack AS stack_a, b.stack AS stack_b,
                             abs(coalesce(b.l0, 0) - coalesce(a.l0, 0)) AS l0_gap
                      FROM s a JOIN s b ON a.model = b.model AND a.hook = b.hook AND a.kind_ = b.kind_
                       AND a.seed IS NOT DISTINCT FROM b.seed AND a.dataset IS NOT DISTINCT FROM b.dataset
                       AND b.d_sae > a.d_sae),
            ranked AS (SELECT *, row_number() OVER (PARTITION BY a_id ORDER BY d_b, l0_gap, b_id) AS rn FROM pairs)
            SELECT a_id, b_id FROM ranked
            WHERE rn = 1 AND (? IS NULL OR stack_a = ? OR stack_b = ?)
            ORDER BY layer, d_a, a_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    raise ValueError(f"unknown pair selection {selection!r}; known: {', '.join(SELECTIONS)}")
