"""Correlation sections of `python -m bench`: co-firing statistics at Gemma Scope widths and at MiniLM size.

- `cofiring`: synthetic sparse activations (log-normal firing rates, L0 ≈ 70, half of b's features planted
  as noisy copies of a-features), 16k × 16k over 100k and 1M tokens in the state `new_state` picks for the
  memory budget (exact: it fits the default 4 GiB), each against the sparse bound measured in the same run
  (one scipy product Aᵀ·B of the two whole token × feature matrices); the capped state at 1M against the
  same bound (what a pair past the budget gets); peak memory of each in its own process, top-16 recall vs a
  dense reference on a feature sample; then 65k × 65k (capped: its exact state needs 51 GB) to the end. The CPU kernels
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

from bench.timing import timed


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _clocked(fn) -> tuple[np.ndarray, object]:
    """([wall, CPU] seconds, fn()): on a shared machine CPU time is the steadier of the two (scipy runs one thread)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return np.array([time.perf_counter() - w0, time.process_time() - c0]), out


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
    (wall, cpu), C = _clocked(lambda: At @ B)
    return {"bound_s": wall, "bound_cpu_s": cpu, "bound_pairs": int(C.nnz), "bound_peak_mb": _peak_mb(), "l0_a": A.nnz / tokens,
            "l0_b": B.nnz / tokens, "pair_events": int(np.dot(np.diff(A.indptr).astype(np.int64), np.diff(B.indptr)))}


def _ours(d_a, d_b, tokens, seed, max_pairs, sample, state: str = "auto", memory: int | None = None,
          chunk_nnz: int | None = None) -> dict:
    """Our state over the synthetic pair: `state` "auto" is what `new_state` picks on the CPU for this memory
    budget (exact where it fits), "capped" the sparse capped state, "exact" the exact one."""
    from atlas_ingest.cofiring import SparseCoFiring, ExactCoFiring, memory_budget, new_state

    data = Synthetic(d_a, d_b, tokens, seed=seed)
    t0 = time.perf_counter()  # load (or compile) the CPU kernels once, outside the measured time
    A0, B0 = next(iter(Synthetic(64, 64, 512, seed=seed)))
    for warm in (SparseCoFiring(64, 64, max_pairs=64, dev=None), ExactCoFiring(64, 64)):  # a tiny cap: the prune runs too
        warm.add(A0, B0)
        warm.finish()
    jit_s = time.perf_counter() - t0
    budget = memory if memory is not None else memory_budget()
    if state == "capped":
        st = SparseCoFiring(d_a, d_b, max_pairs=max_pairs, dev=None, **({"chunk_nnz": chunk_nnz} if chunk_nnz else {}))
    else:
        st = new_state(d_a, d_b, dev=None, dense=True if state == "exact" else None, max_pairs=max_pairs, memory=budget)
    exact = isinstance(st, ExactCoFiring)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(np.r_[rng.choice(data.planted_a, sample // 2, replace=False), rng.choice(d_a, sample // 2, replace=False)])
    ref = np.zeros((d_b, len(rows)))  # exact Σab of the sampled a-features with every b (dense reference)
    spent = np.zeros(2)  # wall, CPU
    for A, B in data:
        spent += _clocked(lambda: st.add(A, B))[0]
        ref += B.T @ A[:, rows].toarray()
    wall, cpu = spent + _clocked(st.finish)[0]
    (t_topk, topk_cpu), cand = _clocked(lambda: st.topk(16))
    # exact r of the sampled rows, from the same moments
    n = st.n
    s_a, q_a, s_b, q_b = st.s_a, st.q_a, st.s_b, st.q_b
    cov = ref.T - np.outer(s_a[rows], s_b) / n
    va, vb = q_a[rows] - s_a[rows] ** 2 / n, q_b - s_b ** 2 / n
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
    kept = int(np.count_nonzero(st.cnt.numpy())) if exact else int(st.pairs.nnz)  # numpy: torch's sum of bools is int64
    return {"d_a": d_a, "d_b": d_b, "tokens": n, "state": "exact" if exact else "capped",
            "memory_budget_gb": budget / 2**30, "seconds": wall, "cpu_s": cpu, "topk_s": t_topk, "topk_cpu_s": topk_cpu,
            "jit_s": jit_s,
            "peak_mb": _peak_mb(), "pairs_kept": kept, "peak_pairs": kept if exact else int(st.peak_pairs),
            "max_pairs": None if exact else max_pairs, "prunes": 0 if exact else st.prunes,
            "error_bound": st.error_bound,
            "sample_features": len(rows), "recall_top16": float(recall), "recall_top16_r_ge_0.1": float(recall_strong),
            "max_abs_r_diff_top16": float(np.abs(ours - np.take_along_axis(r, got, 1)).max()),
            "planted_top1": float(top1.mean())}


def bench_cofiring(d: int, tokens: int, bound: bool | dict = True, max_pairs: int | None = None, seed: int = 0,
                   state: str = "auto") -> dict:
    """Co-firing statistics of a d × d pair over `tokens` synthetic tokens, each side in its own process;
    `bound`: measure it (True), take it from an earlier row of the same pair and tokens (a dict), or none."""
    from atlas_ingest.cofiring import MAX_PAIRS

    out = _in_process(_ours, d, d, tokens, seed, max_pairs or MAX_PAIRS, 64, state)
    if bound is True:
        bound = _in_process(_bound, d, d, tokens, seed)
    if bound:
        out.update({k: v for k, v in bound.items() if k.startswith("bound_") or k in ("l0_a", "l0_b", "pair_events")})
        out["ratio_vs_bound"] = out["cpu_s"] / out["bound_cpu_s"]
        out["wall_ratio_vs_bound"] = out["seconds"] / out["bound_s"]
    out["target"] = ("<= 1.3x the bound, top-16 recall >= 0.95 (exact where it fits the memory budget)" if bound
                     else "runs to the end in <= 4 GB")
    return out


def _minilm(tokens: int = 300_000, d_sae: int = 768, d_in: int = 384) -> dict:
    """MiniLM-sized: synthetic ReLU activations of that shape (the real cache is not needed)."""
    import torch

    from atlas.encode import encode
    from atlas.sae import SAEWeights
    from atlas.synth import unit
    from atlas_ingest.cofiring import accumulate

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

    def dense():
        r = torch.corrcoef(torch.cat([acts_a, acts_b], 1).T)[:d_sae, d_sae:]
        return r, r.nan_to_num(0.0).topk(16, dim=1).indices.numpy()

    t_sparse, (st, cand) = timed(ours)
    t_dense, (r, top_d) = timed(dense)
    r = r.nan_to_num(0.0).double().numpy()
    fired = st.f_a > 0
    same = float((np.sort(cand.a2b_index, 1) == np.sort(top_d, 1)).all(1)[fired].mean())
    ours_r = np.take_along_axis(r, cand.a2b_index, 1)
    return {"tokens": tokens, "d_sae": d_sae, "density": float(st.f_a.sum() / tokens / d_sae),
            "sparse_s": t_sparse, "dense_corrcoef_s": t_dense, "speedup": t_dense / t_sparse,
            "identical_top16": same, "max_abs_r_diff_top16": float(np.abs(ours_r - cand.a2b_score).max()),
            "error_bound": st.error_bound, "target": ">= 10x, identical top-16"}


SECTIONS = ("correlation", "cofiring", "stack-activations")
SHORT_TOKENS = 100_000
"""The cofiring section also measures the 16k pair over this many tokens (the drift of a state with tokens)."""


def run(sections: list[str], save, tokens: int = 1_000_000) -> None:
    """The correlation sections `python -m bench` asked for; `save(section, value)` stores each as it ends."""
    if "correlation" in sections:
        save("correlation", _in_process(_minilm))
    if "cofiring" in sections:  # 16k: what new_state picks (exact in the default budget) at 100k and `tokens`, the
        rows = []               # capped state at `tokens` against the same bound; 65k: capped (exact does not fit)
        for n in sorted({min(SHORT_TOKENS, tokens), tokens}):
            rows.append(bench_cofiring(16384, n))
            save("cofiring", rows)
        rows.append(bench_cofiring(16384, tokens, bound=rows[-1], state="capped"))
        save("cofiring", rows)
        rows.append(bench_cofiring(65536, tokens, bound=False, max_pairs=48_000_000))
        save("cofiring", rows)
    if "stack-activations" in sections:  # on the GPU; a smoke run at toy sizes without CUDA
        from bench import stack_activations

        save("stack-activations", stack_activations.run(tokens=tokens))
