"""The field's headline findings, measured on whatever family the atlas holds (SQL over its tables).

- distance: matched fraction by layer distance (nearby layers share more features);
- siblings: seed siblings vs dataset siblings (the dataset changes features more than the seed);
- agreement: how often decoder-cosine and activation-correlation assignments pick the same partner;
- compositions: AND / OR / PASS features with their parents and example contexts;
- consistency: PW-MCC (mean cosine of one one-to-one assignment of all features, Song et al. 2025) and MMCS
  (mean best |cosine| both ways, Sharkey et al. 2022) of each sibling pair, each against its random baseline;
- widths: per narrow/wide pair, how many narrow features are kept, split, duplicated or absent;
- ablation: per edge kind and layer distance, the share of checked edges that hold under ablation;
- flow: feature-flow origin classes of residual features, from weights and from activations, side by side.
"""

from __future__ import annotations

from .checks import ablation_findings
from .common import dict_rows

DISTANCE_SQL = """
SELECT distance, count(*) AS pairs, avg(matched_frac) AS matched_frac, avg(mean_score) AS mean_score,
       avg(mse_after_perm) AS mse_after_perm, avg(explained_variance) AS explained_variance
FROM layer_pairs WHERE method = ? AND stack LIKE ? GROUP BY distance ORDER BY distance
"""

SIBLINGS_SQL = """
WITH sib AS (
    SELECT p.sae_a, p.sae_b, a.layer,
           CASE WHEN a.dataset IS DISTINCT FROM b.dataset THEN 'dataset'
                WHEN a.seed IS DISTINCT FROM b.seed THEN 'seed' ELSE 'variant' END AS relation
    FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b
    WHERE p.method = 'decoder_cos' AND a.layer = b.layer AND a.site = b.site AND a.stack <> b.stack AND a.model LIKE ?),
shared AS (  -- Paulo & Belrose: same partner under decoder and encoder assignments, both cosines >= 0.7
    SELECT m.sae_a, m.sae_b, count(*) AS n FROM (
        SELECT sae_a, sae_b, feature_a, feature_b FROM matches
        WHERE assigned AND score >= 0.7 AND method IN ('decoder_cos', 'encoder_cos')
        GROUP BY ALL HAVING count(DISTINCT method) = 2) m GROUP BY ALL)
SELECT relation, count(*) AS pairs, avg(ps.matched_frac) AS decoder_matched_frac,
       avg(coalesce(sh.n, 0) / ps.n_a) AS shared_frac
FROM sib JOIN pair_stats ps ON ps.sae_a = sib.sae_a AND ps.sae_b = sib.sae_b AND ps.method = 'decoder_cos'
LEFT JOIN shared sh ON sh.sae_a = sib.sae_a AND sh.sae_b = sib.sae_b
GROUP BY relation ORDER BY relation
"""

AGREEMENT_SQL = """
WITH d AS (SELECT sae_a, sae_b, feature_a, feature_b FROM matches WHERE method = 'decoder_cos' AND assigned),
     c AS (SELECT sae_a, sae_b, feature_a, feature_b FROM matches WHERE method = 'activation_corr' AND assigned)
SELECT d.sae_a, d.sae_b, count(*) AS both_assigned, avg((d.feature_b = c.feature_b)::INT) AS same_partner
FROM d JOIN c USING (sae_a, sae_b, feature_a)
GROUP BY ALL ORDER BY d.sae_a, d.sae_b
"""

COMPOSITIONS_SQL = """
SELECT c.kind, c.sae_a, c.parents, c.sae_b, c.feature_b, c.score
FROM compositions c WHERE c.kind IN ('AND', 'OR') ORDER BY c.score DESC LIMIT ?
"""


CONSISTENCY_SQL = """
SELECT p.sae_a, p.sae_b, a.layer,
       CASE WHEN a.dataset IS NOT DISTINCT FROM b.dataset THEN 'seed' ELSE 'dataset' END AS relation,
       p.pw_mcc, p.pw_mcc_random, p.mmcs, p.mmcs_random
FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b
WHERE p.method = 'decoder_cos' AND (p.pw_mcc IS NOT NULL OR p.mmcs IS NOT NULL) AND a.layer = b.layer AND a.site = b.site
  AND a.stack <> b.stack
  AND a.d_sae = b.d_sae AND a.model LIKE ?
ORDER BY a.layer, p.sae_a, p.sae_b
"""

WIDTHS_SQL = """
SELECT w.sae_a, w.sae_b, a.layer, a.d_sae AS d_a, b.d_sae AS d_b,
       count(*) FILTER (WHERE class = 'kept') AS kept, count(*) FILTER (WHERE class = 'split') AS split,
       count(*) FILTER (WHERE class = 'duplicate') AS duplicate, count(*) FILTER (WHERE class = 'absent') AS absent,
       avg(n_children) FILTER (WHERE class = 'split') AS mean_split_children,
       avg(combo_cos) FILTER (WHERE class = 'split') AS mean_split_combo_cos
FROM widths w JOIN saes a ON a.sae_id = w.sae_a JOIN saes b ON b.sae_id = w.sae_b
WHERE a.model LIKE ? GROUP BY ALL ORDER BY a.layer, d_a
"""


FLOW_SQL = """
SELECT DISTINCT r.sae_id, r.layer, r.d_sae FROM saes r JOIN saes x
  ON x.model = r.model AND x.layer = r.layer AND x.d_in = r.d_in AND x.site IN ('mlp', 'attn')
WHERE r.site = 'resid' AND r.model LIKE ? ORDER BY r.layer, r.sae_id
"""


def flow(con, model: str = "%", tau: float = 0.5) -> list[dict]:
    """Origin classes (RES, MLP, ATT, combinations, from nowhere; atlas.queries.lineage.flow_origins) of every
    feature of each residual SAE that has MLP/attention-out SAEs at its layer: by decoder cosine (weights)
    and by activation correlation (Pearson r over the same tokens), and the share of features both give
    the same class."""
    from .lineage import flow_origins

    out = []
    for sae_id, layer, d_sae in con.execute(FLOW_SQL, [model]).fetchall():
        by = {m: flow_origins(con, sae_id, list(range(d_sae)), m, tau) for m in ("decoder_cos", "activation_corr")}
        if not any(by.values()):
            continue
        counts = {m: {c: list(o.values()).count(c) for c in sorted(set(o.values()))} for m, o in by.items()}
        w, a = by["decoder_cos"], by["activation_corr"]
        agree = sum(w[f] == a[f] for f in w) / len(w) if w and a else None
        out.append({"sae_id": sae_id, "layer": layer, "weights": counts["decoder_cos"],
                    "activations": counts["activation_corr"], "agree": agree})
    return out


def context(con, sae_id: str, feature: int, n: int = 2) -> list[str]:
    """The feature's top example contexts, the firing token in [brackets]."""
    rows = con.execute("SELECT tokens, highlight FROM examples WHERE sae_id = ? AND feature = ? AND kind = 'top' "
                       "ORDER BY activation DESC LIMIT ?", [sae_id, feature, n]).fetchall()
    return [" ".join(f"[{t}]" if i == h else t for i, t in enumerate(toks)).replace(" ##", "") for toks, h in rows]


def findings(con, model: str = "%", stack: str = "%", examples: int = 3) -> dict:
    comps = dict_rows(con, COMPOSITIONS_SQL, [examples])
    for c in comps:
        c["child_context"] = context(con, c["sae_b"], c["feature_b"])
        c["parent_contexts"] = {p: context(con, c["sae_a"], p, 1) for p in c["parents"]}
    kinds = dict(con.execute("SELECT kind, count(*) FROM compositions GROUP BY 1").fetchall())
    return {
        "distance": dict_rows(con, DISTANCE_SQL, ["decoder_cos", stack]),
        "siblings": dict_rows(con, SIBLINGS_SQL, [model]),
        "agreement": dict_rows(con, AGREEMENT_SQL, []),
        "composition_counts": kinds,
        "compositions": comps,
        "consistency": dict_rows(con, CONSISTENCY_SQL, [model]),
        "widths": dict_rows(con, WIDTHS_SQL, [model]),
        "ablation": ablation_findings(con, model),  # edges that hold under ablation (checks.py)
        "flow": flow(con, model),
    }
