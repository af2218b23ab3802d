"""Co-firing statistics against dense references, planted compositions, and the sparse activation_corr path."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch

from atlas.match.pair import MatchParams, match_candidates
from atlas.sae import SAEWeights
from atlas_ingest.cofiring import SparseCoFiring, accumulate, sparse
from atlas_ingest.compositions import Compositions
from atlas_ingest.examples import Examples


def sparse_acts(rng, t, d, density, scale=3.0):
    """[t, d] non-negative activations, each feature firing with its own rate around `density`."""
    rate = density * rng.lognormal(0, 1, d) / np.exp(0.5)
    return (rng.random((t, d)) < rate) * rng.random((t, d)) * scale


def dense_reference(A, B):
    r = np.nan_to_num(np.corrcoef(A.T, B.T)[:A.shape[1], A.shape[1]:])
    c = (A > 0).astype(float).T @ (B > 0).astype(float)
    fa, fb = (A > 0).sum(0)[:, None], (B > 0).sum(0)[None, :]
    return {"pearson": r, "cofire": c, "p_b_given_a": c / np.maximum(fa, 1), "jaccard": c / np.maximum(fa + fb - c, 1)}


def batches(x, size):
    return [x[s:s + size] for s in range(0, x.shape[0], size)]


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    A, B = sparse_acts(rng, 4000, 70, 0.06), sparse_acts(rng, 4000, 50, 0.04)
    B[:, 0] = A[:, 0] * 2 + (A[:, 0] > 0) * rng.random(4000)  # a correlated pair
    A[:, 69] = 0  # a dead feature: r = 0 with everything
    B[:, 7] = 0
    B[:, 8] = (rng.random(4000) < 0.0015) * 1.0  # a rare feature: few co-firing partners
    return A, B


@pytest.mark.parametrize("chunk, cells", [(10**8, 10**8), (900, 500)])
def test_statistics_equal_a_dense_reference(pair, chunk, cells, monkeypatch):
    """One product over all tokens in one block, and many merges into blocks of 10 a-features."""
    monkeypatch.setattr(sparse, "BLOCK_CELLS", cells)
    A, B = pair
    st = SparseCoFiring(A.shape[1], B.shape[1], chunk_nnz=chunk)
    for a, b in zip(batches(A, 333), batches(B, 333)):
        st.add(a, b)
    got, want = st.finish().dense(), dense_reference(A, B)
    for key in ("pearson", "cofire", "p_b_given_a", "jaccard"):
        assert np.abs(got[key] - want[key]).max() <= 1e-5, key
    assert st.error_bound == 0.0 and st.n == len(A)


def test_topk_is_exact_in_both_directions_including_pairs_that_never_cofire(pair):
    A, B = pair
    st = accumulate(batches(A, 1000), batches(B, 1000))
    r = dense_reference(A, B)["pearson"]
    c = st.topk(16)
    for got_i, got_s, full in ((c.a2b_index, c.a2b_score, r), (c.b2a_index, c.b2a_score, r.T)):
        want_s = -np.sort(-full, 1)[:, :16]
        assert np.abs(got_s - want_s).max() <= 1e-9
        assert np.abs(np.take_along_axis(full, got_i, 1) - got_s).max() <= 1e-9
    assert (c.b2a_score[8] < 0).any()  # the rare feature's list reaches pairs that never co-fire


def test_torch_products_equal_scipy(pair):
    """The CUDA path (torch sparse products) run on the CPU gives the scipy path's statistics."""
    A, B = pair
    s = accumulate(batches(A, 1000), batches(B, 1000), dev=None).dense()
    t = accumulate(batches(torch.from_numpy(A).float(), 1000), batches(torch.from_numpy(B).float(), 1000),
                   dev=torch.device("cpu")).dense()
    for key in s:
        assert np.abs(s[key] - t[key]).max() <= 1e-6, key


def test_negative_or_mismatched_batches_are_refused():
    st = SparseCoFiring(3, 2)
    with pytest.raises(ValueError, match="non-negative"):
        st.add(-np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="batch shapes"):
        st.add(np.ones((2, 3)), np.ones((3, 2)))


def test_cap_drops_weak_pairs_within_the_stated_bound():
    rng = np.random.default_rng(1)
    A, B = sparse_acts(rng, 6000, 60, 0.08), sparse_acts(rng, 6000, 60, 0.08)
    perm = rng.permutation(60)
    B[:, perm[:30]] = A[:, :30] * (rng.random((6000, 30)) < 0.9)  # 30 planted pairs
    exact = accumulate(batches(A, 500), batches(B, 500))
    capped = accumulate(batches(A, 500), batches(B, 500), max_pairs=2400)
    assert any(capped.thetas) and capped.error_bound > 0
    assert capped.pairs.nnz <= 2400 < exact.pairs.nnz
    e, c = exact.dense(), capped.dense()
    q = np.sqrt(np.outer(exact.q_a, exact.q_b))
    va, vb = (exact.q_a - exact.s_a ** 2 / exact.n), (exact.q_b - exact.s_b ** 2 / exact.n)
    bound = capped.error_bound * q / np.sqrt(np.outer(va, vb))
    assert (np.abs(e["pearson"] - c["pearson"]) <= bound + 1e-9).all()
    assert (c["pearson"] <= e["pearson"] + 1e-9).all()  # dropped sums only ever lower r
    assert (capped.topk(1).a2b_index[:30, 0] == perm[:30]).all()  # the planted pairs survive


def test_planted_and_or_pass_compositions_are_recovered():
    rng = np.random.default_rng(2)
    t, d_a, d_b = 20000, 40, 12
    A = sparse_acts(rng, t, d_a, 0.05)
    A[:, :6] = (rng.random((t, 6)) < 0.2) * (0.5 + rng.random((t, 6)))  # parents fire often enough to combine
    B = sparse_acts(rng, t, d_b, 0.05)
    B[:, 0] = A[:, 0] * 1.5  # PASS: a copy of a0
    B[:, 1] = ((A[:, 1] > 0) & (A[:, 2] > 0)) * (1 + rng.random(t))  # AND(a1, a2)
    B[:, 2] = ((A[:, 3] > 0) | (A[:, 4] > 0)) * (1 + rng.random(t))  # OR(a3, a4)
    B[:, 3] = A[:, 5] * (rng.random(t) < 0.95)  # a noisy copy of a5 whose decoder points elsewhere
    st = accumulate(batches(A, 4096), batches(B, 4096))
    cand = st.topk(8)
    plan = Compositions.plan(cand, st)
    for a, b in zip(batches(A, 3000), batches(B, 3000)):  # another batching than the first pass
        plan.add(a, b)
    dec_cos = np.where(plan.parents == 0, 0.95, 0.1)  # only a0 -> b0 keeps its decoder direction
    found = {c[0]: c[1:] for c in plan.find(cand.b2a_score[:, :plan.parents.shape[1]], dec_cos)}
    assert found[0][:2] == ("PASS", [0])
    assert found[1][:2] == ("AND", [1, 2]) and found[1][2] > 0.95
    assert found[2][:2] == ("OR", [3, 4]) and found[2][2] > 0.95
    assert 3 not in found  # one parent explains it: no composition
    assert not set(found) - {0, 1, 2}
    # the counts behind them equal a dense recount
    j = 1
    x, y = plan.parents[j, :2]
    fx, fy, fb = A[:, x] > 0, A[:, y] > 0, B[:, j] > 0
    s = int(np.flatnonzero((plan.pairs == [0, 1]).all(1))[0])
    assert plan.both[j, s] == (fx & fy).sum() and plan.triple[j, s] == (fx & fy & fb).sum()


def test_examples_keep_the_top_activations_and_a_batching_independent_sample():
    rng = np.random.default_rng(3)
    acts = sparse_acts(rng, 5000, 30, 0.05)
    one, many = Examples(30, n_top=4, n_random=3), Examples(30, n_top=4, n_random=3)
    one.add(acts)
    for b in batches(acts, 217):
        many.add(b)
    for j in range(30):
        want = np.sort(acts[acts[:, j] > 0, j])[::-1][:4]
        kept = many.top.token[j] >= 0
        assert np.allclose(many.top.value[j][kept], want, atol=1e-6)
        assert np.allclose(acts[many.top.token[j][kept], j], many.top.value[j][kept], atol=1e-6)
    assert (one.rand.token == many.rand.token).all() and (one.top.token == many.top.token).all()
    fired = many.rand.token[many.rand.token >= 0]
    assert len(fired) and (acts[fired, np.nonzero(many.rand.token >= 0)[0]] > 0).all()


def test_activation_corr_at_width_4096_takes_the_sparse_path_in_small_memory():
    """A 4096 x 5000 pair: co-firing state, top-k and the sparse assignment, never a d_a x d_b matrix
    (one float64 d_a x d_b would be 164 MB; the whole path stays well below it)."""
    rng = np.random.default_rng(4)
    t, d_a, d_b, l0 = 6000, 4096, 5000, 12
    perm = rng.permutation(d_b)[:d_a]

    def tokens(d):
        rows = np.repeat(np.arange(t), l0)
        cols = rng.integers(0, d, t * l0)
        return rows, cols

    import scipy.sparse as sp

    ra, ca = tokens(d_a)
    A = sp.csr_matrix((rng.random(t * l0) + 0.5, (ra, ca)), shape=(t, d_a))
    A.sum_duplicates()
    Acoo = A.tocoo()
    rb, cb = tokens(d_b)  # b: every a feature copied to perm[a], plus its own random firing
    B = sp.csr_matrix((np.r_[Acoo.data * 1.3, rng.random(t * l0) + 0.5], (np.r_[Acoo.row, rb], np.r_[perm[Acoo.col], cb])),
                      shape=(t, d_b))
    B.sum_duplicates()
    w_a = SAEWeights(W_enc=np.zeros((8, d_a), np.float32), W_dec=np.zeros((d_a, 8), np.float32),
                     b_enc=np.zeros(d_a, np.float32), b_dec=np.zeros(8, np.float32))
    w_b = SAEWeights(W_enc=np.zeros((8, d_b), np.float32), W_dec=np.zeros((d_b, 8), np.float32),
                     b_enc=np.zeros(d_b, np.float32), b_dec=np.zeros(8, np.float32))

    def no_dense():
        raise AssertionError("the dense path ran")

    tracemalloc.start()
    st = accumulate(batches(A, 1000), batches(B, 1000))
    result = match_candidates(st.topk(16), w_a, w_b, "a", "b", MatchParams(method="activation_corr", floor=0.1),
                              full=no_dense)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.66 * d_a * d_b * 8, f"peak {peak / 2**20:.0f} MB"  # below 2/3 of one float64 d_a x d_b
    m = result.matches.filter(result.matches["assigned"]).to_pydict()
    got = dict(zip(m["feature_a"], m["feature_b"]))
    fired = np.flatnonzero(st.f_a > 0)
    assert np.mean([got.get(i) == perm[i] for i in fired]) > 0.99


def test_gpu_check_reports_no_cuda_and_exits_0():
    """`make gpu-check` on a machine without CUDA: one JSON line that says so, quickly, exit 0."""
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run for real")
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["cuda"] is False and "no CUDA" in report["skipped"]
    assert "faiss_num_gpus" in report


def test_make_gpu_check_runs_this_module():
    from pathlib import Path

    make = (Path(__file__).parents[1] / "Makefile").read_text()
    assert "gpu-check:" in make and "-m bench.gpu_check" in make


def test_cofiring_bench_measures_recall_and_the_bound_on_a_tiny_pair():
    """The bench section's own pieces at a tiny size: planted pairs found, recall against its dense sample."""
    from bench.correlation import _bound, _ours

    ours = _ours(256, 256, 6000, 0, 10**6, 16)
    assert ours["tokens"] == 6000 and ours["error_bound"] == 0.0
    assert ours["recall_top16"] == 1.0 and ours["planted_top1"] > 0.95 and ours["max_abs_r_diff_top16"] < 1e-9
    bound = _bound(256, 256, 6000, 0)
    assert bound["bound_pairs"] == ours["pairs_kept"] and bound["bound_s"] > 0
