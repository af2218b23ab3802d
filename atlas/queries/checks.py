"""Ablation checks of lineage edges, read back (docs/design.md, Edges under ablation): per pair and kind, per
kind and layer distance against random pairs, and each lineage edge's own check."""

from __future__ import annotations

import duckdb

from ..methods import DEFAULT
from .records import Lineage

PAIR_SQL = """
SELECT sae_a, sae_b, kind, any_value(distance) AS distance, count(*) AS n, count(rel_drop) AS tested,
       avg(holds::INT) AS held_frac, median(rel_drop) AS median_drop, any_value(control_p95) AS control_p95
FROM edge_checks WHERE method = ? AND (? IS NULL OR sae_a IN (SELECT sae_id FROM saes WHERE stack = ?))
GROUP BY sae_a, sae_b, kind ORDER BY sae_a, sae_b, array_position(['carry', 'split', 'merge', 'gap', 'random'], kind)
"""

FINDINGS_SQL = """
SELECT c.kind, c.distance, count(DISTINCT (c.sae_a, c.sae_b)) AS pairs, count(*) AS n, count(c.rel_drop) AS tested,
       avg(c.holds::INT) AS held_frac, median(c.rel_drop) AS median_drop
FROM edge_checks c JOIN saes a ON a.sae_id = c.sae_a
WHERE c.method = ? AND a.model LIKE ?
GROUP BY c.kind, c.distance ORDER BY c.distance, array_position(['carry', 'split', 'merge', 'gap', 'random'], c.kind)
"""


def _rows(snap, sql, params) -> list[dict]:
    try:
        return snap.rows(sql, params)
    except duckdb.CatalogException:  # an atlas no job has opened since edge_checks was added
        return []


def pair_checks(snap, method: str = DEFAULT, stack: str | None = None) -> list[dict]:
    """Per pair and edge kind: edges checked, tested (child active where the parent fires), the share whose
    child drops beyond the control's 95th percentile, the median relative drop."""
    return _rows(snap, PAIR_SQL, [method, stack, stack])


def ablation_findings(snap, model: str = "%", method: str = DEFAULT) -> list[dict]:
    """Edges that hold under ablation per kind and layer distance; kind 'random' is the control (about 5%
    hold by construction: the bar is its own 95th percentile)."""
    return _rows(snap, FINDINGS_SQL, [method, model])


def attach_checks(snap, lin: Lineage) -> Lineage:
    """The lineage with each edge's ablation check (causal_drop, causal_holds) where one is stored: one query, asked
    only where the snapshot holds checks of the lineage's method."""
    if not lin.edges or lin.method not in snap.checked:
        return lin
    rows = snap.execute(
        "SELECT c.sae_a, c.feature_a, c.sae_b, c.feature_b, c.rel_drop, c.holds FROM edge_checks c JOIN "
        "(SELECT unnest(?) AS sae_a, unnest(?) AS feature_a, unnest(?) AS sae_b, unnest(?) AS feature_b) e "
        "USING (sae_a, feature_a, sae_b, feature_b) WHERE c.method = ? AND c.kind <> 'random'",
        [[e.sae_a for e in lin.edges], [e.feature_a for e in lin.edges], [e.sae_b for e in lin.edges],
         [e.feature_b for e in lin.edges], lin.method]).fetchall()
    found = {tuple(r[:4]): r[4:] for r in rows}
    for e in lin.edges:
        if (e.sae_a, e.feature_a, e.sae_b, e.feature_b) in found:
            e.causal_drop, e.causal_holds = found[(e.sae_a, e.feature_a, e.sae_b, e.feature_b)]
    return lin
