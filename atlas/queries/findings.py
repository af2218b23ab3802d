"""The field's headline findings, measured on whatever family the atlas holds (SQL over its tables).

- distance: matched fraction by layer distance (nearby layers share more features);
- siblings: seed siblings vs dataset siblings (the dataset changes features more than the seed);
- agreement: how often decoder-cosine and activation-correlation assignments pick the same partner;
- compositions: AND / OR / PASS features with their parents and example contexts;
- consistency: PW-MCC (mean cosine of one one-to-one assignment of all features, Song et al. 2025) and MMCS
  (mean best |cosine| both ways, Sharkey et al. 2022) of each sibling pair, each against its random baseline;
- widths: per narrow/wide pair, how many narrow features are kept, split, duplicated or absent;
- ablation: per edge kind and layer distance, the share of checked edges that hold under ablation;
- flow: feature-flow origin classes of residual features, from weights and from activations, side by side;
- same_index: per pair kind, the share of assigned pairs whose two features have the same index, beside chance
  (an SAE family trained from one shared initialisation echoes it here; docs/design.md, Independent inits).

Every row names its model, so an atlas holding several families (the planted one and MiniLM) reads per model.
"""

from __future__ import annotations

from ..methods import Threshold
from .checks import ablation_findings
from .lineage import flow_origins

DISTANCE_SQL = """
SELECT a.model, p.distance, count(*) AS pairs, avg(p.matched_frac) AS matched_frac, avg(p.mean_score) AS mean_score,
       avg(p.mse_after_perm) AS mse_after_perm, avg(p.explained_variance) AS explained_variance
FROM layer_pairs p JOIN saes a ON a.sae_id = p.sae_a
WHERE p.method = ? AND p.stack LIKE ? AND a.model LIKE ? GROUP BY ALL ORDER BY a.model, p.distance
"""

SIBLINGS_SQL = """
WITH sib AS (  -- sibling pairs (the sibling_pairs macro) of two stacks
    SELECT p.sae_a, p.sae_b, a.layer, a.model, s.relation
    FROM pair_stats p JOIN sibling_pairs() s USING (sae_a, sae_b) JOIN saes a ON a.sae_id = p.sae_a
    JOIN saes b ON b.sae_id = p.sae_b
    WHERE p.method = 'decoder_cos' AND a.stack <> b.stack AND a.model LIKE ?),
shared AS (  -- Paulo & Belrose: same partner under decoder and encoder assignments, both cosines >= 0.7
    SELECT m.sae_a, m.sae_b, count(*) AS n FROM (
        SELECT sae_a, sae_b, feature_a, feature_b FROM matches
        WHERE assigned AND score >= 0.7 AND method IN ('decoder_cos', 'encoder_cos')
        GROUP BY ALL HAVING count(DISTINCT method) = 2) m GROUP BY ALL)
SELECT model, relation, count(*) AS pairs, avg(ps.matched_frac) AS decoder_matched_frac,
       avg(coalesce(sh.n, 0) / ps.n_a) AS shared_frac
FROM sib JOIN pair_stats ps ON ps.sae_a = sib.sae_a AND ps.sae_b = sib.sae_b AND ps.method = 'decoder_cos'
LEFT JOIN shared sh ON sh.sae_a = sib.sae_a AND sh.sae_b = sib.sae_b
GROUP BY ALL ORDER BY model, relation
"""

AGREEMENT_SQL = """
WITH d AS (SELECT sae_a, sae_b, feature_a, feature_b FROM matches WHERE method = 'decoder_cos' AND assigned),
     c AS (SELECT sae_a, sae_b, feature_a, feature_b FROM matches WHERE method = 'activation_corr' AND assigned)
SELECT s.model, d.sae_a, d.sae_b, count(*) AS both_assigned, avg((d.feature_b = c.feature_b)::INT) AS same_partner
FROM d JOIN c USING (sae_a, sae_b, feature_a) JOIN saes s ON s.sae_id = d.sae_a
WHERE s.model LIKE ?
GROUP BY ALL ORDER BY s.model, d.sae_a, d.sae_b
"""

COMPOSITIONS_SQL = """
SELECT s.model, c.kind, c.sae_a, c.parents, c.sae_b, c.feature_b, c.score
FROM compositions c JOIN saes s ON s.sae_id = c.sae_a
WHERE c.kind IN ('AND', 'OR') AND s.model LIKE ? ORDER BY c.score DESC LIMIT ?
"""


CONSISTENCY_SQL = """
SELECT a.model, p.sae_a, p.sae_b, a.layer, s.relation, p.pw_mcc, p.pw_mcc_random, p.mmcs, p.mmcs_random
FROM pair_stats p JOIN sibling_pairs() s USING (sae_a, sae_b) JOIN saes a ON a.sae_id = p.sae_a
JOIN saes b ON b.sae_id = p.sae_b
WHERE p.method = 'decoder_cos' AND (p.pw_mcc IS NOT NULL OR p.mmcs IS NOT NULL) AND a.stack <> b.stack
  AND a.model LIKE ?
ORDER BY a.model, a.layer, p.sae_a, p.sae_b
"""

WIDTHS_SQL = """
SELECT a.model, w.sae_a, w.sae_b, a.layer, a.d_sae AS d_a, b.d_sae AS d_b,
       count(*) FILTER (WHERE class = 'kept') AS kept, count(*) FILTER (WHERE class = 'split') AS split,
       count(*) FILTER (WHERE class = 'duplicate') AS duplicate, count(*) FILTER (WHERE class = 'absent') AS absent,
       avg(n_children) FILTER (WHERE class = 'split') AS mean_split_children,
       avg(combo_cos) FILTER (WHERE class = 'split') AS mean_split_combo_cos
FROM widths w JOIN saes a ON a.sae_id = w.sae_a JOIN saes b ON b.sae_id = w.sae_b
WHERE a.model LIKE ? GROUP BY ALL ORDER BY a.model, a.layer, d_a
"""


SAME_INDEX_SQL = """
WITH kinds AS (
    SELECT a.model, p.n_a, p.n_b, p.n_assigned, p.identity_frac,
           CASE WHEN a.stack = b.stack THEN 'layers'
                WHEN s.relation IS NOT NULL THEN s.relation || ' siblings'
                WHEN a.hook = b.hook THEN 'widths (assignment)'
                WHEN a.layer = b.layer AND a.site <> b.site THEN 'flow'
                ELSE 'other' END AS kind,
           CASE WHEN a.stack = b.stack THEN b.layer - a.layer END AS distance
    FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b
    LEFT JOIN sibling_pairs() s ON s.sae_a = p.sae_a AND s.sae_b = p.sae_b
    WHERE p.method = 'decoder_cos' AND p.n_assigned > 0 AND a.model LIKE ?)
SELECT model, kind, distance, count(*) AS pairs, sum(n_assigned)::BIGINT AS assigned,
       sum(identity_frac * n_assigned) / sum(n_assigned) AS same_index, avg(1 / greatest(n_a, n_b)) AS chance
FROM kinds GROUP BY ALL
UNION ALL  -- width children at their parent's index (widths table: a wide feature's parent is its best narrow one)
SELECT a.model, 'width children', NULL, count(DISTINCT (w.sae_a, w.sae_b)), count(*)::BIGINT,
       avg((c.child = w.feature_a)::INT), avg(1 / b.d_sae)
FROM widths w, unnest(w.children) AS c(child), saes a, saes b
WHERE a.sae_id = w.sae_a AND b.sae_id = w.sae_b AND a.model LIKE ?
GROUP BY ALL
ORDER BY model, kind, distance
"""
"""Per model and pair kind (cross-layer carries by layer distance, seed / dataset siblings, width children at their
parent's index, flow pairs): the share of decoder_cos-assigned pairs whose two features have the same index, and
chance (1 / the larger width). SAEs trained from one initialisation leave it far above chance."""

FLOW_SQL = """
SELECT DISTINCT r.model, r.sae_id, r.layer, r.d_sae FROM saes r JOIN saes x
  ON x.model = r.model AND x.layer = r.layer AND x.d_in = r.d_in AND x.site IN ('mlp', 'attn')
WHERE r.site = 'resid' AND r.model LIKE ? ORDER BY r.model, r.layer, r.sae_id
"""


FLOW_TAU = 0.5
"""The bar of the findings' origin classes, by weights and by activations alike."""


def flow(snap, model: str = "%", tau: float = FLOW_TAU) -> list[dict]:
    """Origin classes (RES, MLP, ATT, combinations, from nowhere; atlas.queries.lineage.flow_origins) of every
    feature of each residual SAE that has MLP/attention-out SAEs at its layer: by decoder cosine (weights)
    and by activation correlation (Pearson r over the same tokens), and the share of features both give
    the same class."""
    values = {m: Threshold.of(m, tau, per_pair=False) for m in ("decoder_cos", "activation_corr")}
    out = []
    for model_, sae_id, layer, d_sae in snap.execute(FLOW_SQL, [model]).fetchall():
        by = {m: flow_origins(snap, sae_id, list(range(d_sae)), threshold) for m, threshold in values.items()}
        if not any(by.values()):
            continue
        counts = {m: {c: list(o.values()).count(c) for c in sorted(set(o.values()))} for m, o in by.items()}
        w, a = by["decoder_cos"], by["activation_corr"]
        agree = sum(w[f] == a[f] for f in w) / len(w) if w and a else None
        out.append({"model": model_, "sae_id": sae_id, "layer": layer, "weights": counts["decoder_cos"],
                    "activations": counts["activation_corr"], "agree": agree})
    return out


def context(snap, sae_id: str, feature: int, n: int = 2) -> list[str]:
    """The feature's top example contexts, the firing token in [brackets]."""
    rows = snap.execute("SELECT tokens, highlight FROM examples WHERE sae_id = ? AND feature = ? AND kind = 'top' "
                       "ORDER BY activation DESC LIMIT ?", [sae_id, feature, n]).fetchall()
    return [" ".join(f"[{t}]" if i == h else t for i, t in enumerate(toks)).replace(" ##", "") for toks, h in rows]


def same_index(snap, model: str = "%") -> list[dict]:
    """SAME_INDEX_SQL's rows: how far each pair kind's assignment echoes a shared initialisation."""
    return snap.rows(SAME_INDEX_SQL, [model, model])


def models(snap, model: str = "%") -> list[str]:
    """The models of the atlas's SAEs that match the LIKE pattern `model`, in name order."""
    return [r[0] for r in snap.execute("SELECT DISTINCT model FROM saes WHERE model LIKE ? ORDER BY 1", [model]).fetchall()]


def findings(snap, model: str = "%", stack: str = "%", examples: int = 3) -> dict:
    """Every table of the module docstring for the models matching `model` (LIKE), each row naming its model;
    `stack` (LIKE) narrows the distance table."""
    comps = snap.rows(COMPOSITIONS_SQL, [model, examples])
    for c in comps:
        c["child_context"] = context(snap, c["sae_b"], c["feature_b"])
        c["parent_contexts"] = {p: context(snap, c["sae_a"], p, 1) for p in c["parents"]}
    kinds = dict(snap.execute("SELECT c.kind, count(*) FROM compositions c JOIN saes s ON s.sae_id = c.sae_a "
                             "WHERE s.model LIKE ? GROUP BY 1", [model]).fetchall())
    names = models(snap, model)
    return {
        "distance": snap.rows(DISTANCE_SQL, ["decoder_cos", stack, model]),
        "siblings": snap.rows(SIBLINGS_SQL, [model]),
        "agreement": snap.rows(AGREEMENT_SQL, [model]),
        "composition_counts": kinds,
        "compositions": comps,
        "consistency": snap.rows(CONSISTENCY_SQL, [model]),
        "widths": snap.rows(WIDTHS_SQL, [model]),
        # edges that hold under ablation (checks.py), asked per model so each row can say which
        "ablation": [dict(r, model=m) for m in names for r in ablation_findings(snap, m)],
        "flow": flow(snap, model),
        "same_index": same_index(snap, model),
    }
