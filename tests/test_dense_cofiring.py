"""The dense co-firing states (atlas_ingest.cofiring.dense; on the CPU atlas_ingest.cofiring.exact) against the sparse one
and a float64 reference: the same statistics and top-k in float64, the GPU precision within 1e-4 of float64,
planted partners found, the state new_state picks by device and memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from atlas_ingest.cofiring import SparseCoFiring, DenseCoFiring, ExactCoFiring, new_state
from atlas_ingest.cofiring import dense as dense_cofiring
from atlas_ingest.cofiring import exact as exact_cofiring


def planted(seed=0, t=5000, d_a=60, d_b=48):
    """Sparse non-negative activations; b-feature perm[i] is a noisy copy of a-feature i for i < 24; one
    dead feature on each side."""
    rng = np.random.default_rng(seed)

    def acts(d, density):
        rate = density * rng.lognormal(0, 1, d) / np.exp(0.5)
        return (rng.random((t, d)) < rate) * rng.gamma(2.0, 0.5, (t, d))

    A, B = acts(d_a, 0.05), acts(d_b, 0.04)
    perm = rng.permutation(d_b)[:24]
    B[:, perm] = A[:, :24] * 1.5 * (rng.random((t, 24)) < 0.9)
    A[:, d_a - 1] = 0
    B[:, [j for j in range(d_b) if j not in perm][0]] = 0
    return A, B, perm


def stream(state, A, B, size=700):
    """Feed the state batches of mixed types (numpy, scipy CSR, torch), as the jobs do."""
    kinds = (lambda x: x, sp.csr_matrix, torch.from_numpy)
    for i, s in enumerate(range(0, len(A), size)):
        f = kinds[i % 3]
        state.add(f(A[s:s + size]), f(B[s:s + size]))
    return state.finish()


def test_dense_and_sparse_states_agree_in_float64(monkeypatch):
    """Every statistic of every pair and both top-k lists, over several token blocks and output tiles."""
    monkeypatch.setattr(dense_cofiring, "TILE_BYTES", 8 * 48 * 7)  # 7-row tiles: many per product and top-k
    A, B, _ = planted()
    sparse = stream(SparseCoFiring(60, 48, dev=None), A, B)
    dense = stream(DenseCoFiring(60, 48, dev="cpu", block_tokens=1500), A, B)
    assert dense.precision == "float64" and dense.error_bound == 0.0 and dense.n == sparse.n == len(A)
    s, d = sparse.dense(), dense.dense()
    for key in s:
        assert np.abs(s[key] - d[key]).max() <= 1e-12, key
    for name in ("s_a", "q_a", "f_a", "s_b", "q_b", "f_b"):
        assert np.allclose(getattr(sparse, name), getattr(dense, name), rtol=1e-12, atol=0), name
    cs, cd = sparse.topk(8), dense.topk(8)
    live_a, live_b = sparse.f_a > 0, sparse.f_b > 0  # a dead feature's row is all ties at r = 0
    assert (cs.a2b_index == cd.a2b_index)[live_a].all() and (cs.b2a_index == cd.b2a_index)[live_b].all()
    assert np.abs(cs.a2b_score - cd.a2b_score).max() <= 1e-12 and np.abs(cs.b2a_score - cd.b2a_score).max() <= 1e-12
    rows, cols = np.array([0, 5, 59, 3]), np.array([7, 0, 2, 47])
    for key, v in sparse.stats(rows, cols).items():
        assert np.allclose(v, dense.stats(rows, cols)[key], rtol=0, atol=1e-12), key


def test_topk_breaks_ties_by_column_like_a_stable_sort():
    r = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [0.1, 0.5, 0.5, -0.2, 0.5], [0.3, 0.1, 0.2, 0.9, 0.0]], dtype=torch.float64)
    v, i = dense_cofiring._topk_rows(r, 2)
    assert i.tolist() == [[0, 1], [1, 2], [3, 0]] and v[2].tolist() == [0.9, 0.3]


@pytest.mark.parametrize("precision", ["float32", "bf16x3"])
def test_gpu_precisions_stay_within_1e_4_of_float64(precision):
    """The GPU modes run here on float32 inputs with float32 products (bf16x3: its bfloat16 parts, whose
    products float32 holds exactly, as tensor cores do): r within 1e-4 of float64 on every pair, counts exact."""
    A, B, perm = planted(seed=1, t=6000)
    ref = stream(DenseCoFiring(60, 48, dev="cpu"), A, B)
    got = stream(DenseCoFiring(60, 48, dev="cpu", precision=precision, block_tokens=2048),
                 A.astype(np.float32), B.astype(np.float32))
    r, g = ref.dense(), got.dense()
    assert np.abs(r["pearson"] - g["pearson"]).max() <= 1e-4
    assert (r["cofire"] == g["cofire"]).all() and (r["jaccard"] == g["jaccard"]).all()
    assert (got.topk(1).a2b_index[:24, 0] == perm).all()  # planted top-1 partners


def test_planted_partners_are_each_others_top_1_at_width_1024():
    """A wider pair, dense on the CPU when asked: every planted copy is its parent's best partner and back."""
    rng = np.random.default_rng(5)
    t, d, l0 = 4000, 1024, 20
    A = sp.random(t, d, density=l0 / d, random_state=rng, data_rvs=lambda n: rng.gamma(2.0, 0.5, n), format="csr")
    perm = rng.permutation(d)
    noise = sp.random(t, d, density=l0 / d, random_state=rng, format="csr")
    B = (A[:, np.argsort(perm)] * 1.3 + noise).tocsr()  # b-feature perm[i] copies a-feature i
    st = new_state(d, d, dev=None, dense=True)
    assert isinstance(st, DenseCoFiring)
    for s in range(0, t, 1000):
        st.add(A[s:s + 1000], B[s:s + 1000])
    c = st.finish().topk(4)
    fired = np.flatnonzero(st.f_a > 0)
    assert (c.a2b_index[fired, 0] == perm[fired]).all()
    assert (c.b2a_index[perm[fired], 0] == fired).all()


def test_new_state_on_the_cpu_is_exact_where_it_fits_the_memory_budget(monkeypatch):
    """16k x 16k fits the default 4 GiB (3.2 GB of accumulators), 65k x 65k (51 GB) does not; a second 16k pair
    while the first is alive does not either: the states of one process share the budget."""
    assert exact_cofiring.memory_budget() == 4 * 2**30
    first = new_state(16384, 16384, dev=None)
    assert isinstance(first, ExactCoFiring) and first.error_bound == 0.0
    assert type(new_state(16384, 16384, dev=None)) is SparseCoFiring  # the first still holds 3.8 GB of the 4 GiB
    del first
    assert isinstance(new_state(16384, 16384, dev=None), ExactCoFiring)
    assert type(new_state(65536, 65536, dev=None)) is SparseCoFiring
    assert type(new_state(64, 64, dev=None, dense=False)) is SparseCoFiring
    monkeypatch.setenv(exact_cofiring.MEMORY_ENV, "2G")  # below one 16k state
    assert type(new_state(16384, 16384, dev=None)) is SparseCoFiring
    assert isinstance(new_state(16384, 16384, dev=None, memory=8 * 2**30), ExactCoFiring)
    monkeypatch.setenv(exact_cofiring.MEMORY_ENV, "lots")
    with pytest.raises(ValueError, match="ATLAS_COFIRING_MEMORY='lots'"):
        new_state(64, 64, dev=None)
    assert dense_cofiring.state_bytes(16384, 16384, "bf16x3") == 16384 ** 2 * 8  # 2.1 GB on a GPU


def test_exact_cpu_state_equals_the_sparse_and_dense_states():
    """The exact CPU state (compiled scatter of sparse batches into dense accumulators) against the uncapped
    sparse state and the float64 GEMM state: every statistic, and the top-k of its compiled pass, in both
    directions (dead features' rows are all ties: the dense states agree on them, the sparse one orders them
    its own way)."""
    A, B, perm = planted(seed=5)
    ex = stream(ExactCoFiring(60, 48, chunk_nnz=2500), A, B)  # several chunks
    sparse = stream(SparseCoFiring(60, 48, dev=None), A, B)
    gemm = stream(DenseCoFiring(60, 48, dev="cpu"), A, B)
    assert ex.error_bound == 0.0 and ex.n == len(A)
    d_e, d_s = ex.dense(), sparse.dense()
    for key in d_s:
        assert np.abs(d_e[key] - d_s[key]).max() <= 1e-12, key
    assert (ex.cnt.numpy() == np.round(d_s["cofire"])).all()
    live_a, live_b = sparse.f_a > 0, sparse.f_b > 0
    for k in (1, 8, 48, 60):
        ce, cs, cg = ex.topk(k), sparse.topk(k), gemm.topk(k)
        assert (ce.a2b_index == cg.a2b_index).all() and (ce.b2a_index == cg.b2a_index).all(), k
        assert (ce.a2b_index == cs.a2b_index)[live_a].all() and (ce.b2a_index == cs.b2a_index)[live_b].all(), k
        assert np.abs(ce.a2b_score - cs.a2b_score).max() <= 1e-12 and np.abs(ce.b2a_score - cs.b2a_score).max() <= 1e-12
    assert (ex.topk(1).a2b_index[:24, 0] == perm).all()
    rows, cols = np.array([0, 5, 59, 3]), np.array([7, 0, 2, 47])
    for key, v in sparse.stats(rows, cols).items():
        assert np.allclose(v, ex.stats(rows, cols)[key], rtol=0, atol=1e-12), key


def test_exact_cpu_sums_do_not_depend_on_the_thread_count():
    """Each a-feature's row is summed by one thread in token order: 1 and 2 numba threads give identical bits."""
    import numba

    A, B, _ = planted(seed=6, t=3000)
    got = []
    for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        numba.set_num_threads(threads)
        try:
            got.append(stream(ExactCoFiring(60, 48, chunk_nnz=4000), A, B))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert (got[0].sab.numpy() == got[1].sab.numpy()).all() and (got[0].cnt.numpy() == got[1].cnt.numpy()).all()


def test_exact_cpu_state_refuses_bad_batches():
    st = ExactCoFiring(3, 2)
    with pytest.raises(ValueError, match="non-negative"):
        st.add(-np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="batch shapes"):
        st.add(np.ones((2, 3)), np.ones((3, 2)))


def test_bad_batches_are_refused():
    st = DenseCoFiring(3, 2, dev="cpu")
    with pytest.raises(ValueError, match="non-negative"):
        st.add(-np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="batch shapes"):
        st.add(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="unknown precision"):
        DenseCoFiring(3, 2, dev="cpu", precision="fp8")


def test_gpu_check_dense_sections_run_their_steps_on_the_cpu_at_toy_sizes():
    """`make gpu-check`'s dense sections (bench/gpu_check.py) with dev="cpu" at width 256: the same code
    as on a GPU but the kernels, so their reports hold what the README quotes."""
    from bench.gpu_check import check_dense, check_dense_exact

    report = {}
    check_dense(report, 256, 4096, float("inf"), dev="cpu")
    check_dense_exact(report, 256, 4096, dev="cpu")
    assert report["dense_256_tokens"] >= 4096 and report["dense_256_planted_top1"] == 1.0
    assert report["dense_256_bare_two_gemms_s"] > 0 and report["dense_256_ratio_vs_state_kernels"] > 0
    assert report["dense_exact_max_abs_r_diff"] <= 1e-4 and report["dense_exact_max_count_diff"] == 0
    assert report["dense_exact_same_top16_rows"] > 0.99


def test_stack_activations_bench_runs_its_smoke_version_without_cuda(tmp_path):
    """`python -m bench stack-activations` without CUDA: the one-pass loop at toy sizes, marked as such."""
    import json
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the section would run at full size")
    out = subprocess.run([sys.executable, "-m", "bench", "stack-activations", "--results", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (result,) = tmp_path.glob("bench-*.json")
    row = json.loads(result.read_text())["stack-activations"]
    assert row["cuda"] is False and row["smoke"] is True and row["pairs"] == row["layers"] - 1 == 2
    assert row["tokens"] == 2048 and row["dense_pairs"] == 2 and 30 < row["l0"] < 120
    assert abs(sum(row[k] for k in ("forward_share", "encode_share", "statistics_share", "topk_share")) - 1) < 0.05


def test_capped_sparse_state_prunes_alike_on_the_compiled_and_the_torch_path():
    """The CPU's compiled merge-and-score pass and the torch products (the CUDA path, run on the CPU)
    keep the same pairs under the same cap, with the same thresholds."""
    A, B, perm = planted(seed=3, t=6000)
    states = [stream(SparseCoFiring(60, 48, max_pairs=600, dev=dev, chunk_nnz=4000), A, B) for dev in (None, torch.device("cpu"))]
    (c, t) = states
    assert c.prunes == t.prunes > 0 and np.allclose(c.thetas, t.thetas, rtol=1e-12)
    assert (c.pairs != 0).nnz == (t.pairs != 0).nnz <= 600
    d_c, d_t = c.dense(), t.dense()
    for key in d_c:
        assert np.abs(d_c[key] - d_t[key]).max() <= 1e-9, key
    assert (c.topk(1).a2b_index[:24, 0] == perm).all()
