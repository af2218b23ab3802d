"""PW-MCC and MMCS against plain scipy / numpy references on random and planted SAEs, the sparse PW-MCC
within its stated deviation, the random baselines against simulation, and an old atlas's migration."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.optimize import linear_sum_assignment

from atlas.match.candidates import edges, topk_both
from atlas.match.consistency import baseline_key, mmcs_random, pw_mcc, pw_mcc_dense, pw_mcc_random, pw_mcc_sparse
from atlas.match.pair import MatchParams, match_pair
from atlas.sae import SAEWeights
from atlas.store.schema import SCHEMA_VERSION
from atlas.synth import SynthConfig, sibling, unit
from atlas_cli import main

SPARSE_DEVIATION = 1e-4  # stated in atlas/match/consistency.py and the README; measured by `python -m bench pwmcc`


def _weights(x):
    return SAEWeights(W_enc=x.T.copy(), W_dec=x, b_enc=np.zeros(len(x), np.float32),
                      b_dec=np.zeros(x.shape[1], np.float32))


def _reference(a, b) -> float:
    """Song et al.'s MCC as their code computes it: unit rows, cost 1 − cos, scipy's assignment, mean matched."""
    ua, ub = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    cost = 1 - ua.astype(np.float64) @ ub.T.astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    return 1 - cost[rows, cols].sum() / len(rows)


def _planted(n: int, d: int, shared: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A base SAE and a sibling sharing `shared` of its features (drifted), orphans elsewhere (atlas synth)."""
    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n, d), dtype=np.float32))
    return base, sibling(SynthConfig(d_in=d, d_sae=n), rng, base, shared)[0]


def _random(n_a: int, n_b: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_a, d), dtype=np.float32), rng.standard_normal((n_b, d), dtype=np.float32)


@pytest.mark.parametrize("a,b", [_random(200, 300, 48, 1), _random(300, 200, 48, 2), _planted(256, 128, 0.7, 3),
                                 _planted(256, 128, 0.4, 4)], ids=["random-wider-b", "random-wider-a", "seed", "dataset"])
def test_pw_mcc_equals_scipy_reference(a, b):
    ref = _reference(a, b)
    stats = match_pair(_weights(a), _weights(b), "a", "b", MatchParams()).stats  # what the atlas stores
    assert stats["pw_mcc"] == pytest.approx(ref, abs=1e-6)
    assert pw_mcc(a, b) == pytest.approx(ref, abs=1e-6)
    # over min(n_a, n_b) pairs: a rectangular pair is the same number either way round
    assert pw_mcc(b, a) == pytest.approx(ref, abs=1e-6)
    # and the sparse assignment over the candidates agrees at these sizes
    assert pw_mcc_sparse(*edges(topk_both(a, b, 16)), a, b) == pytest.approx(ref, abs=SPARSE_DEVIATION)


def test_pw_mcc_differs_from_mmcs_where_best_partners_collide():
    """Two features of b that both best fit one feature of a: MMCS counts that cosine twice, PW-MCC once."""
    a = np.eye(4, dtype=np.float32)[:2]
    b = np.stack([np.array([1, 0.1, 0, 0]), np.array([1, 0, 0.1, 0])]).astype(np.float32)
    stats = match_pair(_weights(a), _weights(b), "a", "b", MatchParams()).stats
    assert stats["pw_mcc"] == pytest.approx((0.995 + 0.1) / 2, abs=1e-3)  # one of them must take feature 1
    assert stats["mmcs"] == pytest.approx(0.995 * 0.75 + 0.0995 * 0.25, abs=1e-3)
    assert stats["mmcs"] > stats["pw_mcc"]


def test_sparse_pw_mcc_is_within_its_stated_deviation():
    """The sparse assignment (used above 4096 x 4096) is a valid one-to-one assignment, so never above the
    exact value, and within SPARSE_DEVIATION below it at 4k (about 2 s); the bench measures 4k and 16k
    on other shapes."""
    a, b = _planted(4096, 256, 0.7, 5)
    exact = pw_mcc_dense(a.astype(np.float64) @ b.T.astype(np.float64))
    sparse = pw_mcc_sparse(*edges(topk_both(a, b, 16)), a, b)
    assert exact - SPARSE_DEVIATION <= sparse <= exact + 1e-6


def test_mmcs_equals_a_plain_numpy_reference():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((300, 48)).astype(np.float32)
    b = np.concatenate([-a[:200] + 0.3 * rng.standard_normal((200, 48)).astype(np.float32),  # sign-flipped twins
                        rng.standard_normal((150, 48)).astype(np.float32)])
    ua, ub = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.abs(ua.astype(np.float64) @ ub.T.astype(np.float64))
    stats = match_pair(_weights(a), _weights(b), "a", "b", MatchParams()).stats
    assert stats["mmcs"] == pytest.approx((c.max(1).mean() + c.max(0).mean()) / 2, abs=1e-6)
    assert stats["mmcs"] > stats["mmcs_random"] + 0.2
    # the sign-flipped twins have cosine ≈ −0.96: MMCS counts them (|cos|), PW-MCC's signed assignment does not
    assert stats["pw_mcc"] < stats["pw_mcc_random"] + 0.05


@pytest.mark.parametrize("n_a,n_b,d", [(400, 800, 64), (1000, 1000, 384)])
def test_random_baselines_match_random_decoders(n_a, n_b, d):
    sims = [match_pair(_weights(a), _weights(b), "a", "b", MatchParams()).stats
            for a, b in (_random(n_a, n_b, d, 100 + s) for s in range(3))]
    assert np.mean([s["mmcs"] for s in sims]) == pytest.approx(mmcs_random(n_a, n_b, d), rel=0.01)
    # the baseline is one seeded draw: its spread between draws is 1.2e-3 at 400 x 800 in 64 dims, 4e-4 at
    # 1000 x 1000 in 384 (20 draws each)
    assert np.mean([s["pw_mcc"] for s in sims]) == pytest.approx(pw_mcc_random(n_a, n_b, d), abs=5e-3)
    assert all(s["pw_mcc_random"] == pw_mcc_random(n_a, n_b, d) < s["mmcs_random"] for s in sims)


def test_a_version_5_atlas_keeps_its_value_as_mmcs_and_match_recomputes_pw_mcc(synth_atlas, tmp_path):
    """Schema 6: what versions 4-5 stored as pw_mcc was MMCS. Migrating moves it to mmcs (nothing lost) and
    leaves pw_mcc NULL; `atlas match` with the same --pairs then computes PW-MCC."""
    old = synth_atlas.copy_to(tmp_path / "v5.duckdb")
    q = ("SELECT sae_a, sae_b, pw_mcc, pw_mcc_random, mmcs, mmcs_random, params_hash FROM pair_stats "
         "WHERE method = 'decoder_cos' AND mmcs IS NOT NULL ORDER BY ALL")
    with synth_atlas.read() as con:
        fresh = con.execute(q).fetchall()
    assert fresh
    with duckdb.connect(str(old.path)) as con:  # version 5's shape: MMCS stored under the name pw_mcc
        con.execute("UPDATE pair_stats SET pw_mcc = mmcs, pw_mcc_random = mmcs_random")
        con.execute("ALTER TABLE pair_stats DROP COLUMN mmcs; ALTER TABLE pair_stats DROP COLUMN mmcs_random;"
                    "ALTER TABLE widths DROP COLUMN min_child_cos; UPDATE schema_version SET version = 5")
    run = CliRunner().invoke
    r = run(main, ["--atlas", str(old.path), "migrate"])
    assert r.exit_code == 0 and f"from schema version 5 to {SCHEMA_VERSION}" in r.output, r.output
    assert f"{len(fresh)} decoder_cos pairs keep their old consistency value as mmcs" in r.output
    with old.read() as con:
        moved = con.execute(q).fetchall()
    assert [(a, b, m, mr) for a, b, _, _, m, mr, _ in moved] == [(a, b, m, mr) for a, b, _, _, m, mr, _ in fresh]
    assert all(p is None and pr is None for _, _, p, pr, *_ in moved)
    r = run(main, ["--atlas", str(old.path), "findings"])
    assert r.exit_code == 0 and "PW-MCC not computed (rerun `atlas match`)" in r.output, r.output
    computed = 0
    for pairs in ("distance", "siblings"):  # the selections that built the atlas (conftest.build_atlas)
        r = run(main, ["--atlas", str(old.path), "match", "--pairs", pairs, "--method", "decoder_cos"])
        assert r.exit_code == 0, r.output
        computed += int(r.output.split("matched ", 1)[1].split()[0])
    assert computed == len(fresh)
    with old.read() as con:
        again = con.execute(q).fetchall()
    assert [(a, b, h) for a, b, *_, h in again] == [(a, b, h) for a, b, *_, h in fresh]
    assert [p for _, _, p, *_ in again] == pytest.approx([p for _, _, p, *_ in fresh], abs=1e-9)


def test_findings_table_shows_pw_mcc_and_mmcs_and_reads_old_artifacts_as_mmcs(synth_atlas, tmp_path):
    import json

    from bench import findings, readme

    out = tmp_path / "findings-20260101T000000.json"
    findings.main(["--atlas", str(synth_atlas.path), "--model", "synth", "--stack", "%", "--out", str(out)])
    art = json.loads(out.read_text())
    seed = [r for r in art["findings"]["consistency"] if r["relation"] == "seed"]
    rows = dict(line.strip("| ").split(" | ") for line in readme.findings_table(tmp_path).splitlines()
                if line.startswith("| seed consistency"))
    pw, mm = (next(v for k, v in rows.items() if k.startswith(f"seed consistency: {m}")) for m in ("PW-MCC", "MMCS"))
    assert f"seed siblings {sum(r['pw_mcc'] for r in seed) / len(seed):.3f}" in pw
    assert f"seed siblings {sum(r['mmcs'] for r in seed) / len(seed):.3f}" in mm
    # an artifact from before schema 6: its pw_mcc was MMCS
    for r in art["findings"]["consistency"]:
        r["pw_mcc"], r["pw_mcc_random"] = r.pop("mmcs"), r.pop("mmcs_random")
    out.write_text(json.dumps(art))
    table = readme.findings_table(tmp_path)
    assert "PW-MCC" in table and "not in this artifact" in table and mm.strip() in table


def test_the_atlas_keeps_each_shapes_random_baseline_and_later_jobs_reuse_it(family, tmp_path, monkeypatch):
    """pw_mcc_random costs a second candidate search at 16k: the first job of a shape computes it and the atlas
    keeps it (random_baselines, keyed by shape and method); a later job of that shape reads it and computes
    none; a value kept by another version of the code path is computed again."""
    from atlas.match import consistency
    from atlas.store import Atlas
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.jobs.match import run_match
    from atlas_ingest.sources import read_sae

    atlas = Atlas(tmp_path / "a.duckdb")
    ingest(atlas, [lambda f=f: read_sae(f) for f in family[1][:3]])  # layers 0-2 of one stack: 256 x 512 each
    with atlas.read() as con:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]
    calls = []
    real = consistency.pw_mcc_random
    monkeypatch.setattr(consistency, "pw_mcc_random", lambda *shape: calls.append(shape) or real(*shape))
    q = "SELECT method, n_a, n_b, d_in, k, version, value, run_id IS NOT NULL FROM random_baselines"
    run_match(atlas, [(ids[0], ids[1])], ["decoder_cos"], MatchParams())
    assert calls == [(256, 256, 512, 16)]
    want = ("pw_mcc", 256, 256, 512, 16, consistency.BASELINE_VERSION, real(256, 256, 512, 16), True)
    with atlas.read() as con:
        assert con.execute(q).fetchall() == [want]
    run_match(atlas, [(ids[1], ids[2])], ["decoder_cos"], MatchParams())
    assert len(calls) == 1  # the same shape: kept, not computed
    with atlas.read() as con:
        assert con.execute(q).fetchall() == [want]
        stored = con.execute("SELECT pw_mcc_random FROM pair_stats WHERE method = 'decoder_cos'").fetchall()
    assert stored == [(want[6],), (want[6],)]
    with duckdb.connect(str(atlas.path)) as con:  # as if an older code path had kept it
        con.execute("UPDATE random_baselines SET version = version - 1, value = 0.5")
    run_match(atlas, [(ids[0], ids[2])], ["decoder_cos"], MatchParams())
    assert len(calls) == 2
    with atlas.read() as con:
        assert sorted(con.execute(q).fetchall()) == sorted([want, want[:5] + (want[5] - 1, 0.5, True)])
        assert con.execute("SELECT pw_mcc_random FROM pair_stats WHERE sae_a = ? AND sae_b = ?",
                           [ids[0], ids[2]]).fetchall() == [(want[6],)]


def test_match_pair_uses_a_kept_baseline_and_reports_the_ones_it_computed():
    a, b = _random(300, 500, 32, 9)
    fresh = match_pair(_weights(a), _weights(b), "a", "b", MatchParams())
    assert fresh.stats["pw_mcc_random"] == pw_mcc_random(300, 500, 32, 16)
    assert [{k: r[k] for k in ("method", "n_a", "n_b", "d_in", "k", "value")} for r in fresh.baselines] == [
        {"method": "pw_mcc", "n_a": 300, "n_b": 500, "d_in": 32, "k": 16, "value": fresh.stats["pw_mcc_random"]}]
    kept = match_pair(_weights(a), _weights(b), "a", "b", MatchParams(), {baseline_key(300, 500, 32, 16): 0.123})
    assert kept.stats["pw_mcc_random"] == 0.123 and kept.baselines == []
    assert kept.stats["pw_mcc"] == fresh.stats["pw_mcc"]
