"""The matching engine against planted truth, the dense reference, and the folding formula."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from atlas.match.candidates import topk_both
from atlas.match.pair import MatchParams, match_pair
from atlas.queries.selection import select_pairs
from atlas.sae import SAEWeights
from atlas.store import Atlas
from atlas_ingest.jobs.match import run_match
from atlas_ingest.sources import read_sae

from .conftest import TINY, build_atlas


@pytest.fixture(scope="module")
def base_stack(family):
    return [read_sae(f) for f in family[1][: TINY.n_layers]]


def _truth_edges(truth, sae_a, sae_b, kinds=("carry", "split", "merge")):
    return {(t["feature_a"], t["feature_b"]) for t in truth
            if t["sae_a"] == sae_a and t["sae_b"] == sae_b and t["kind"] in kinds}


@pytest.mark.parametrize("method", ["decoder_cos", "decoder_mse"])
def test_planted_truth_recovered_on_adjacent_layers(base_stack, truth, method):
    for a, b in zip(base_stack, base_stack[1:]):
        ida, idb = a.meta.sae_id, b.meta.sae_id
        rows = match_pair(a.weights, b.weights, ida, idb, MatchParams(method=method)).matches.to_pylist()
        assigned = {(r["feature_a"], r["feature_b"]) for r in rows if r["assigned"]}
        carry = _truth_edges(truth, ida, idb, ("carry",))
        assert len(assigned & carry) >= 0.99 * len(carry)
        # nothing is assigned that the truth does not hold (splits and merges assign one of their edges)
        assert assigned <= _truth_edges(truth, ida, idb)
        dead = {t["feature_a"] for t in truth if t["kind"] == "death" and t["sae_a"] == ida}
        born = {t["feature_b"] for t in truth if t["kind"] == "birth" and t["sae_b"] == idb}
        assert dead and born
        assert not dead & {fa for fa, _ in assigned} and not born & {fb for _, fb in assigned}
        if method == "decoder_cos":  # 0 false best matches above tau, assigned or not
            best = {(r["feature_a"], r["feature_b"]) for r in rows if r["score"] >= 0.7 and r["rank"] == 1}
            assert best <= _truth_edges(truth, ida, idb)


def test_splits_show_as_rank_two_candidates(base_stack, truth):
    a, b = base_stack[0], base_stack[1]
    rows = match_pair(a.weights, b.weights, a.meta.sae_id, b.meta.sae_id, MatchParams()).matches.to_pylist()
    splits = _truth_edges(truth, a.meta.sae_id, b.meta.sae_id, ("split",))
    parents = {fa for fa, _ in splits}
    assert parents
    for p in parents:
        top2 = {(r["feature_b"], r["rank"]) for r in rows if r["feature_a"] == p and r["rank"] <= 2 and r["score"] >= 0.7}
        assert {fb for fb, _ in top2} == {fb for fa, fb in splits if fa == p}


@pytest.mark.parametrize("method", ["decoder_cos", "decoder_mse", "encoder_cos"])
def test_dense_and_sparse_assignment_agree(family, method):
    a, b = read_sae(family[1][0]), read_sae(family[1][TINY.n_layers])  # a layer and its seed sibling
    res = {s: match_pair(a.weights, b.weights, "a", "b", MatchParams(method=method, solver=s)) for s in ("dense", "sparse")}
    pairs = {s: {(r["feature_a"], r["feature_b"]) for r in res[s].matches.to_pylist() if r["assigned"]} for s in res}
    assert pairs["dense"] == pairs["sparse"]
    assert res["dense"].stats["n_matched"] == res["sparse"].stats["n_matched"] > 0


def _jumprelu(rng, n, d, theta):
    dec = rng.standard_normal((n, d)).astype(np.float32)
    dec /= np.linalg.norm(dec, axis=1, keepdims=True)
    return SAEWeights(W_enc=dec.T.copy(), W_dec=dec, b_enc=np.zeros(n, np.float32), b_dec=np.zeros(d, np.float32),
                      threshold=np.asarray(theta, np.float32))


def test_decoder_mse_reproduces_reference_ordering():
    """Reference, written plainly: fold θ into W_dec rows, dense MSE matrix, Hungarian minimising it."""
    rng = np.random.default_rng(1)
    n, d = 48, 32
    a = _jumprelu(rng, n, d, rng.uniform(0.5, 2.0, n))
    perm = rng.permutation(n)
    b = _jumprelu(rng, n, d, a.threshold[perm] * rng.uniform(0.8, 1.25, n))
    b.W_dec = a.W_dec[perm] + 0.3 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    fa, fb = a.W_dec * a.threshold[:, None], b.W_dec * b.threshold[:, None]
    ref_mse = ((fa[:, None, :] - fb[None, :, :]) ** 2).mean(-1)
    ref_rows, ref_cols = linear_sum_assignment(ref_mse)
    ref_order = np.argsort(ref_mse, axis=1)[:, :8]

    result = match_pair(a, b, "a", "b", MatchParams(method="decoder_mse", k=8, floor=-100.0))
    rows = result.matches.to_pylist()
    ours = {(r["feature_a"], r["feature_b"]) for r in rows if r["assigned"]}
    assert ours == set(zip(ref_rows.tolist(), ref_cols.tolist()))
    for i in range(n):
        mine = sorted((r["rank"], r["feature_b"]) for r in rows if r["feature_a"] == i and r["rank"] <= 8)
        assert [fb_ for _, fb_ in mine] == ref_order[i].tolist()
        got = {r["feature_b"]: r["score"] for r in rows if r["feature_a"] == i}
        np.testing.assert_allclose([got[j] for j in ref_order[i]], ref_mse[i, ref_order[i]], rtol=1e-4, atol=1e-7)


def test_folding_changes_the_match_where_it_should():
    """Feature 0 of A fires at small magnitudes (θ = 1). In B, feature 0 points the same way but only
    fires at θ = 4; feature 1 points slightly off but at θ = 1. Cosine picks B0; folded MSE picks B1."""
    d = 16
    e = np.eye(d, dtype=np.float32)
    off = (e[0] + 0.45 * e[1]) / np.linalg.norm(e[0] + 0.45 * e[1])
    a = SAEWeights(W_enc=e[:2].T.copy(), W_dec=e[:2].copy(), b_enc=np.zeros(2, np.float32),
                   b_dec=np.zeros(d, np.float32), threshold=np.array([1.0, 1.0], np.float32))
    a.W_dec[1] = e[5]
    b = SAEWeights(W_enc=np.stack([e[0], off], 1), W_dec=np.stack([e[0], off]), b_enc=np.zeros(2, np.float32),
                   b_dec=np.zeros(d, np.float32), threshold=np.array([4.0, 1.0], np.float32))
    best = {}
    for method in ("decoder_cos", "decoder_mse"):
        rows = match_pair(a, b, "a", "b", MatchParams(method=method, k=2)).matches.to_pylist()
        best[method] = next(r["feature_b"] for r in rows if r["feature_a"] == 0 and r["rank"] == 1)
    assert best == {"decoder_cos": 0, "decoder_mse": 1}


def test_candidates_equal_brute_force_in_both_directions():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((300, 24)), rng.standard_normal((200, 24))
    c = topk_both(a, b, k=5, block=64)  # several blocks, so the running column top-k is exercised
    ua, ub = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    s = ua @ ub.T
    np.testing.assert_array_equal(c.a2b_index, np.argsort(-s, axis=1)[:, :5])
    np.testing.assert_array_equal(c.b2a_index, np.argsort(-s.T, axis=1)[:, :5])
    np.testing.assert_allclose(c.b2a_score, -np.sort(-s.T, axis=1)[:, :5], rtol=1e-5)


def test_jobs_are_incremental_and_record_pair_stats(tmp_path, family):
    atlas = build_atlas(tmp_path / "a.duckdb", family[1][:3], match=False)
    with atlas.read() as con:
        pairs = select_pairs(con, "adjacent")
    assert pairs == [("synth-resid0-w256-s0-A", "synth-resid1-w256-s0-A"),
                     ("synth-resid1-w256-s0-A", "synth-resid2-w256-s0-A")]
    first = run_match(atlas, pairs, ["decoder_cos"], MatchParams())
    assert len(first.computed) == 2
    from atlas_ingest.jobs.ingest import ingest

    ingest(atlas, [lambda: read_sae(family[1][3])])
    with atlas.read() as con:
        pairs = select_pairs(con, "adjacent")
    second = run_match(atlas, pairs, ["decoder_cos"], MatchParams())
    assert second.computed == [("synth-resid2-w256-s0-A", "synth-resid3-w256-s0-A", "decoder_cos")]
    assert len(second.skipped) == 2
    with atlas.read() as con:
        stats = con.execute("SELECT n_a, n_matched, matched_frac, identity_frac, len(score_hist) FROM pair_stats").fetchall()
        assert len(stats) == 3 and all(s[0] == 256 and s[1] > 230 and s[4] == 20 for s in stats)
        assert con.execute("SELECT count(*) FROM matches WHERE assigned GROUP BY sae_a, sae_b HAVING "
                           "count(DISTINCT feature_b) <> count(*)").fetchall() == []  # one-to-one


KILL_MATCH = """
import os, signal, sys
import atlas_ingest.tasks as tasks
import atlas_ingest.jobs.match as job
from atlas.match.pair import MatchParams
from atlas.queries.selection import select_pairs
from atlas.store import Atlas
calls = 0
real = tasks.match_pair
def dying(*a, **k):
    global calls
    calls += 1
    if calls == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
tasks.match_pair = dying
atlas = Atlas(sys.argv[1])
with atlas.read() as con:
    pairs = select_pairs(con, "distance", distance=2)
job.run_match(atlas, pairs, ["decoder_cos"], MatchParams(), publish_every=0, batch=1)
"""


def test_killed_match_resumes_to_the_same_atlas(tmp_path, family):
    killed = build_atlas(tmp_path / "k.duckdb", family[1][:4], match=False)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_MATCH), str(killed.path)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    with killed.read() as con:
        assert con.execute("SELECT count(*) FROM pair_stats").fetchone()[0] == 2  # published before the kill
        assert con.execute("SELECT status FROM runs WHERE kind = 'match'").fetchone()[0] == "running"
        pairs = select_pairs(con, "distance", distance=2)
    resumed = run_match(killed, pairs, ["decoder_cos"], MatchParams())
    assert len(resumed.skipped) == 2 and len(resumed.computed) == 3
    clean = build_atlas(tmp_path / "c.duckdb", family[1][:4], match=False)
    run_match(clean, pairs, ["decoder_cos"], MatchParams())
    q = "SELECT sae_a, feature_a, sae_b, feature_b, score, rank, assigned FROM matches ORDER BY ALL"
    with killed.read() as k, clean.read() as c:
        assert k.execute(q).fetchall() == c.execute(q).fetchall()
        assert k.execute("SELECT list(status ORDER BY started_at) FROM runs WHERE kind = 'match'").fetchone()[0] == [
            "interrupted", "ok"]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_faiss_candidates_agree_with_the_blocked_product(factory):
    """The FAISS path (HNSW for >= 256k features) finds the same best candidates as the exact product."""
    from atlas import index as fx
    from atlas.match.candidates import topk_faiss

    rng = np.random.default_rng(5)
    a = rng.standard_normal((400, 32)).astype(np.float32)
    b = np.concatenate([a[rng.permutation(400)] + 0.05 * rng.standard_normal((400, 32)).astype(np.float32),
                        rng.standard_normal((100, 32)).astype(np.float32)])
    exact = topk_both(a, b, k=4)
    approx = topk_faiss(a, b, k=4, index_a=fx.build(a, factory), index_b=fx.build(b, factory))
    top1 = (approx.a2b_index[:, 0] == exact.a2b_index[:, 0]).mean()
    assert top1 >= (1.0 if factory == "Flat" else 0.98)
    if factory == "Flat":
        np.testing.assert_allclose(approx.a2b_score[:, 0], exact.a2b_score[:, 0], atol=1e-5)
