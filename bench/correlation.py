"""Correlation sections of `python -m bench`: co-firing statistics at Gemma Scope widths and at MiniLM size.

- `cofiring`: synthetic sparse activations (log-normal firing rates, L0 ≈ 70, half of b's features planted
  as noisy copies of a-features), 16k × 16k over 1M tokens against the sparse bound measured in the same
  run (one scipy product Aᵀ·B of the two whole token × feature matrices), peak memory of each in its own
  process, exactness vs a dense reference on a feature sample; then 65k × 65k to the end. The CPU kernels
  are loaded (compiled on a first run) before the clock starts; `jit_s` says how long that took.
- `correlation`: 768 features, 300k tokens, against dense `torch.corrcoef` of the same activations.
- `stack-activations`: a Gemma-2-2B-shaped model, 26 SAEs, 25 pairs in one pass (bench/stack_activations.py).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time

import numpy as np
import scipy.sparse as sp


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds: on a shared machine CPU time is the steadier of the two (scipy runs one thread)."""
    return time.perf_counter(), time.process_time()


class Synthetic:
    """Token batches of a planted pair, regenerated identically from (seed, batch index) in any process."""

    def __init__(self, d_a: int, d_b: int, tokens: int, l0: float = 70, batch: int = 8192, seed: int = 0):
        self.d_a, self.d_b, self.tokens, self.batch, self.seed = d_a, d_b, tokens, batch, seed
        rng = np.random.default_rng(seed)
        self.rate_a, self.rate_b = (self._rates(rng, d, l0) for d in (d_a, d_b))
        n_planted = min(d_a, d_b) // 2
        self.planted_a = rng.permutation(d_a)[:n_planted]
        self.planted_b = rng.permutation(d_b)[:n_planted]
        self.rate_b[self.planted_b] = 0.0  # their firing comes from the planted parent

    @staticmethod
    def _rates(rng, d, l0):
        r = np.exp(rng.normal(0, 1.0, d))
        return np.minimum(r * l0 / r.sum(), 0.5)

    def _side(self, rng, t, rate):
        n = rng.binomial(t, rate)
        cols = np.repeat(np.arange(len(rate), dtype=np.int32), n)
        rows = rng.integers(0, t, n.sum(), dtype=np.int32)
        m = sp.csc_matrix((rng.gamma(2.0, 0.5, n.sum()), (rows, cols)), shape=(t, len(rate)))
        m.sum_duplicates()
        return m

    def __iter__(self):
        for i, s in enumerate(range(0, self.tokens, self.batch)):
            t = min(self.batch, self.tokens - s)
            rng = np.random.default_rng([self.seed, i])
            A, B = self._side(rng, t, self.rate_a), self._side(rng, t, self.rate_b)
            parent = A[:, self.planted_a].tocoo()  # planted b = 1.5 × parent, kept on 90% of its tokens
            keep = rng.random(parent.nnz) < 0.9
            extra = sp.csr_matrix((parent.data[keep] * 1.5, (parent.row[keep], self.planted_b[parent.col[keep]])),
                                  shape=(t, self.d_b))
            yield A.tocsr(), (B.tocsr() + extra).tocsr()


def _in_process(fn, *args):
    """Run fn(*args) in a fresh process (its own peak RSS); returns its dict."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)


def _bound(d_a, d_b, tokens, seed) -> dict:
    data = Synthetic(d_a, d_b, tokens, seed=seed)
    parts = list(data)
    A = sp.vstack([p[0] for p in parts], format="csr")
    B = sp.vstack([p[1] for p in parts], format="csr")
    del parts
    At = A.T.tocsr()
    w0, c0 = _clock()
    C = At @ B
    w1, c1 = _clock()
    return {"bound_s": w1 - w0, "bound_cpu_s": c1 - c0, "bound_pairs": int(C.nnz), "bound_peak_mb": _peak_mb(), "l0_a": A.nnz / tokens,
            "l0_b": B.nnz / tokens, "pair_events": int(np.dot(np.diff(A.indptr).astype(np.int64), np.diff(B.indptr)))}


def _ours(d_a, d_b, tokens, seed, max_pairs, sample) -> dict:
    from ingest.cofiring import CoFiring

    data = Synthetic(d_a, d_b, tokens, seed=seed)
    t0 = time.perf_counter()  # load (or compile) the CPU kernels once, outside the measured time
    A0, B0 = next(iter(Synthetic(64, 64, 512, seed=seed)))
    warm = CoFiring(64, 64, max_pairs=64, dev=None)  # a tiny cap: the prune's kernel runs too
    warm.add(A0, B0)
    warm.finish()
    jit_s = time.perf_counter() - t0
    st = CoFiring(d_a, d_b, max_pairs=max_pairs)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(np.r_[rng.choice(data.planted_a, sample // 2, replace=False), rng.choice(d_a, sample // 2, replace=False)])
    ref = np.zeros((d_b, len(rows)))  # exact Σab of the sampled a-features with every b (dense reference)
    wall = cpu = 0.0
    for A, B in data:
        w0, c0 = _clock()
        st.add(A, B)
        w1, c1 = _clock()
        wall, cpu = wall + w1 - w0, cpu + c1 - c0
        ref += B.T @ A[:, rows].toarray()
    w0, c0 = _clock()
    st.finish()
    w1, c1 = _clock()
    wall, cpu = wall + w1 - w0, cpu + c1 - c0
    t0 = time.perf_counter()
    cand = st.topk(16)
    t_topk = time.perf_counter() - t0
    # exact r of the sampled rows, from the same moments
    n = st.n
    cov = ref.T - np.outer(st.s_a[rows], st.s_b) / n
    va, vb = st.q_a[rows] - st.s_a[rows] ** 2 / n, st.q_b - st.s_b ** 2 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.nan_to_num(cov / np.sqrt(np.outer(va, vb)))
    want = np.argsort(-r, 1, kind="stable")[:, :16]
    got = cand.a2b_index[rows]
    recall = np.mean([len(set(w) & set(g)) / 16 for w, g in zip(want, got)])
    strong = [(set(w[r[i, w] >= 0.1]), set(g)) for i, (w, g) in enumerate(zip(want, got))]
    recall_strong = sum(len(w & g) for w, g in strong) / max(sum(len(w) for w, _ in strong), 1)
    ours = st.stats(np.repeat(rows, 16), got.ravel())["pearson"].reshape(len(rows), 16)
    planted_b = dict(zip(data.planted_a.tolist(), data.planted_b.tolist()))
    top1 = np.array([cand.a2b_index[i, 0] == planted_b[i] for i in data.planted_a])
    return {"d_a": d_a, "d_b": d_b, "tokens": n, "seconds": wall, "cpu_s": cpu, "topk_s": t_topk, "jit_s": jit_s,
            "peak_mb": _peak_mb(),
            "pairs_kept": int(st.pairs.nnz), "peak_pairs": int(st.peak_pairs), "max_pairs": max_pairs,
            "prunes": st.prunes, "error_bound": st.error_bound,
            "sample_features": len(rows), "recall_top16": float(recall), "recall_top16_r_ge_0.1": float(recall_strong),
            "max_abs_r_diff_top16": float(np.abs(ours - np.take_along_axis(r, got, 1)).max()),
            "planted_top1": float(top1.mean())}


def bench_cofiring(d: int, tokens: int, bound: bool = True, max_pairs: int | None = None, seed: int = 0) -> dict:
    """Co-firing statistics of a d × d pair over `tokens` synthetic tokens, each side in its own process."""
    from ingest.cofiring import MAX_PAIRS

    out = _in_process(_ours, d, d, tokens, seed, max_pairs or MAX_PAIRS, 64)
    if bound:
        out.update(_in_process(_bound, d, d, tokens, seed))
        out["ratio_vs_bound"] = out["cpu_s"] / out["bound_cpu_s"]
        out["wall_ratio_vs_bound"] = out["seconds"] / out["bound_s"]
    out["target"] = "<= 1.5x the bound, <= 2 GB" if bound else "runs to the end in <= 4 GB"
    return out


def _minilm(tokens: int, d_sae: int, d_in: int = 384) -> dict:
    import torch

    from atlas.encode import encode
    from atlas.sae import SAEWeights
    from atlas.synth import unit
    from ingest.cofiring import accumulate

    torch.manual_seed(0)
    rng = np.random.default_rng(2)

    def sae():  # ReLU SAE whose biases make about 3% of features fire per token, as trained SAEs do
        w = unit(rng.standard_normal((d_sae, d_in), dtype=np.float32))
        return SAEWeights(W_enc=w.T.copy(), W_dec=w, b_enc=np.full(d_sae, -0.14, np.float32),
                          b_dec=np.zeros(d_in, np.float32))

    a, b = sae(), sae()
    x = torch.from_numpy((rng.standard_normal((tokens, d_in)) * 1.5 / np.sqrt(d_in)).astype(np.float32))
    y = x + 0.3 * torch.randn_like(x) / float(np.sqrt(d_in))
    acts_a, acts_b = encode(a, x, "standard"), encode(b, y, "standard")  # encoding is not what is compared

    def ours():
        st = accumulate(acts_a.split(8192), acts_b.split(8192))
        return st, st.topk(16)

    t0 = time.perf_counter()
    st, cand = ours()
    t_sparse = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = torch.corrcoef(torch.cat([acts_a, acts_b], 1).T)[:d_sae, d_sae:]
    top_d = r.nan_to_num(0.0).topk(16, dim=1).indices.numpy()
    t_dense = time.perf_counter() - t0
    r = r.nan_to_num(0.0).double().numpy()
    fired = st.f_a > 0
    same = float((np.sort(cand.a2b_index, 1) == np.sort(top_d, 1)).all(1)[fired].mean())
    ours_r = np.take_along_axis(r, cand.a2b_index, 1)
    return {"tokens": tokens, "d_sae": d_sae, "density": float(st.f_a.sum() / tokens / d_sae),
            "sparse_s": t_sparse, "dense_corrcoef_s": t_dense, "speedup": t_dense / t_sparse,
            "identical_top16": same, "max_abs_r_diff_top16": float(np.abs(ours_r - cand.a2b_score).max()),
            "error_bound": st.error_bound, "target": ">= 10x, identical top-16"}


def bench_minilm(tokens: int = 300_000, d_sae: int = 768) -> dict:
    """MiniLM-sized: synthetic ReLU activations of that shape (the real cache is not needed)."""
    return _in_process(_minilm, tokens, d_sae)


SECTIONS = ("correlation", "cofiring", "stack-activations")


def run(sections: list[str], save, tokens: int = 1_000_000) -> None:
    """The correlation sections `python -m bench` asked for; `save(section, value)` stores each as it ends."""
    if "correlation" in sections:
        save("correlation", bench_minilm())
    if "cofiring" in sections:
        rows = [bench_cofiring(16384, tokens)]
        save("cofiring", rows)
        rows.append(bench_cofiring(65536, tokens, bound=False, max_pairs=48_000_000))
        save("cofiring", rows)
    if "stack-activations" in sections:  # on the GPU; a smoke run at toy sizes without CUDA
        from bench import stack_activations

        save("stack-activations", stack_activations.run(tokens=tokens))
