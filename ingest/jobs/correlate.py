"""Correlate job: activation statistics of SAE pairs → correlations, activation_corr matches, pair_stats,
compositions, feature examples, and activation checks of the weight matches (SAE Match)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas.match.pair import MatchParams, match_scores
from atlas.store import Atlas, record_run
from ingest.activations import MANIFEST, load_layer, load_tokens, model_path
from ingest.correlate import compositions, examples, pair_activations, top_correlations, weight_match_quality
from ingest.sources import read_sae


@dataclass
class CorrelateSummary:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    compositions: dict[str, int] = field(default_factory=dict)
    examples: int = 0


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def correlate(atlas: Atlas, pairs: list[tuple[str, str]], activations: Path, k: int = 16,
              params: MatchParams | None = None, with_examples: bool = True, progress=None,
              max_tokens: int | None = None) -> CorrelateSummary:
    """Activation statistics for each (sae_a, sae_b) over the tokens stored in `activations` (the first
    `max_tokens` of them, when given)."""
    from transformers import AutoTokenizer

    params = params or MatchParams(method="activation_corr", floor=0.1)
    manifest = json.loads((activations / MANIFEST).read_text())
    dataset = manifest["config"]["corpus"]
    tokens = {k_: v[:max_tokens] for k_, v in load_tokens(activations).items()}
    tokenizer = AutoTokenizer.from_pretrained(model_path(manifest["config"]["model"]))
    layer_cache: dict[int, object] = {}
    summary = CorrelateSummary()

    def layer(i):
        if i not in layer_cache:
            if i not in manifest["config"]["layers"]:
                raise ValueError(f"{activations}: no activations stored for layer {i}")
            layer_cache[i] = load_layer(activations, i)[:max_tokens]
        return layer_cache[i]

    with atlas.write() as w, record_run(w, "correlate", {"pairs": pairs, "activations": str(activations), "k": k}) as run_id:
        rows = dict(((r[0]), r[1:]) for r in w.con.execute("SELECT sae_id, source, format, layer FROM saes").fetchall())
        recs = {}
        for a, b in pairs:
            for s in (a, b):
                if s not in rows:
                    raise KeyError(f"unknown SAE {s!r}")
                if s not in recs:
                    recs[s] = read_sae(rows[s][0], fmt=rows[s][1], sae_id=s, layer=rows[s][2])
            ra, rb = recs[a], recs[b]
            xa, xb = layer(ra.meta.layer), layer(rb.meta.layer)
            p = pair_activations(ra, rb, xa, xb)
            fa, fb = top_correlations(p, k)
            corr = pa.table({"sae_a": pa.repeat(a, len(fa)), "feature_a": pa.array(fa, pa.int32()),
                             "sae_b": pa.repeat(b, len(fa)), "feature_b": pa.array(fb, pa.int32()),
                             "pearson": pa.array(p.pearson[fa, fb], pa.float32()),
                             "p_b_given_a": pa.array(p.p_b_given_a()[fa, fb], pa.float32()),
                             "jaccard": pa.array(p.jaccard()[fa, fb], pa.float32()),
                             "n_tokens": pa.repeat(p.n, len(fa)).cast(pa.int64()), "run_id": pa.repeat(run_id, len(fa))})
            result = match_scores(p.pearson.astype(np.float64), ra.weights, rb.weights, a, b, params)
            dec_cos = _unit(ra.weights.W_dec) @ _unit(rb.weights.W_dec).T
            comps = compositions(p, dec_cos) if ra.meta.layer < rb.meta.layer else []
            with w.transaction() as con:
                for table in ("correlations", "compositions"):
                    con.execute(f"DELETE FROM {table} WHERE sae_a = ? AND sae_b = ?", [a, b])
                con.execute("DELETE FROM matches WHERE sae_a = ? AND sae_b = ? AND method = 'activation_corr'", [a, b])
                con.execute("DELETE FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = 'activation_corr'", [a, b])
                w.insert_arrow("correlations", corr)
                w.insert_arrow("matches", result.matches.append_column("run_id", pa.repeat(run_id, result.matches.num_rows)))
                stats = dict(result.stats, sae_a=a, sae_b=b, method="activation_corr",
                             params_hash=params.hash(ra.meta.sha256, rb.meta.sha256), run_id=run_id)
                w.insert_arrow("pair_stats", pa.Table.from_pylist([stats]))
                if comps:
                    w.insert_arrow("compositions", pa.table({
                        "sae_b": pa.repeat(b, len(comps)), "feature_b": pa.array([c[0] for c in comps], pa.int32()),
                        "kind": pa.array([c[1] for c in comps]), "parents": pa.array([c[2] for c in comps], pa.list_(pa.int32())),
                        "sae_a": pa.repeat(a, len(comps)), "score": pa.array([c[3] for c in comps], pa.float32()),
                        "run_id": pa.repeat(run_id, len(comps))}))
                # SAE Match's activation checks of every weight-based assignment of this pair
                for method, in con.execute("SELECT method FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method <> "
                                           "'activation_corr'", [a, b]).fetchall():
                    pairs_ab = np.array(con.execute(
                        "SELECT feature_a, feature_b FROM matches WHERE sae_a = ? AND sae_b = ? AND method = ? AND assigned",
                        [a, b, method]).fetchall(), dtype=np.int64).reshape(-1, 2)
                    q = weight_match_quality(ra, rb, p, pairs_ab[:, 0], pairs_ab[:, 1], xa, xb)
                    con.execute("UPDATE pair_stats SET matching_score = ?, explained_variance = ? WHERE sae_a = ? "
                                "AND sae_b = ? AND method = ?", [q["matching_score"], q["explained_variance"], a, b, method])
            summary.pairs.append((a, b))
            summary.compositions[f"{a}->{b}"] = len(comps)
            if with_examples:
                for sid, acts in ((a, p.acts_a), (b, p.acts_b)):
                    summary.examples += _store_examples(w, sid, acts, tokens, tokenizer, dataset, run_id)
            if progress:
                progress(a, b)
    return summary


def _store_examples(w, sae_id, acts, tokens, tokenizer, dataset, run_id) -> int:
    if w.con.execute("SELECT count(*) FROM examples WHERE sae_id = ? AND dataset = ?", [sae_id, dataset]).fetchone()[0]:
        return 0
    rows = examples(acts, tokens, tokenizer)
    if not rows:
        return 0
    with w.transaction():
        w.insert_arrow("examples", pa.table({
            "sae_id": pa.repeat(sae_id, len(rows)), "feature": pa.array([r[0] for r in rows], pa.int32()),
            "kind": pa.array([r[1] for r in rows]), "activation": pa.array([r[2] for r in rows], pa.float32()),
            "token": pa.array([r[3] for r in rows], pa.int32()), "tokens": pa.array([r[4] for r in rows], pa.list_(pa.string())),
            "highlight": pa.array([r[5] for r in rows], pa.int32()), "dataset": pa.repeat(dataset, len(rows)),
            "run_id": pa.repeat(run_id, len(rows))}))
    return len(rows)
