"""`python -m bench pwmcc`: the sparse PW-MCC (over the top-k candidate graph, used above 4096 x 4096)
against the exact dense assignment at 4k and 16k features, on planted seed and dataset siblings and on
random decoders, with MMCS and both random baselines beside them (atlas/match/consistency.py)."""

from __future__ import annotations

import time

import numpy as np

SIZES = (4096, 16384)
KINDS = {"seed sibling (70% shared)": 0.7, "dataset sibling (40% shared)": 0.4, "random": 0.0}


def _pair(n: int, d: int, shared: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from atlas.synth import SynthConfig, unit, sibling

    rng = np.random.default_rng(seed)
    base = unit(rng.standard_normal((n, d), dtype=np.float32))
    if shared == 0:
        return base, unit(rng.standard_normal((n, d), dtype=np.float32))
    return base, sibling(SynthConfig(d_in=d, d_sae=n), rng, base, shared)[0]


def measure(n: int, d: int, shared: float, k: int = 16) -> dict:
    from atlas.match.candidates import edges, full_scores, topk_both
    from atlas.match.consistency import mmcs, mmcs_random, pw_mcc_dense, pw_mcc_random, pw_mcc_sparse

    a, b = _pair(n, d, shared, seed=n)
    t0 = time.perf_counter()
    cand = topk_both(a, b, k, absmax=True)
    t_cand = time.perf_counter() - t0
    t0 = time.perf_counter()
    sparse = pw_mcc_sparse(*edges(cand), a, b)
    t_sparse = time.perf_counter() - t0
    t0 = time.perf_counter()
    dense = pw_mcc_dense(full_scores(a, b).astype(np.float64))
    t_dense = time.perf_counter() - t0
    return {"n": n, "d_in": d, "shared": shared, "k": k, "pw_mcc_dense": dense, "pw_mcc_sparse": sparse,
            "deviation": sparse - dense, "mmcs": mmcs(cand.a_absmax, cand.b_absmax),
            "pw_mcc_random": pw_mcc_random(n, n, d, k), "mmcs_random": mmcs_random(n, n, d),
            "candidates_s": t_cand, "sparse_s": t_sparse, "dense_s": t_dense}


def run(d: int = 768, log=print) -> list[dict]:
    rows = []
    for n in SIZES:
        for name, shared in KINDS.items():
            row = dict(measure(n, d, shared), kind=name)
            log(f"  {n:>6} {name:<30} dense {row['pw_mcc_dense']:.5f} sparse {row['pw_mcc_sparse']:.5f} "
                f"({row['deviation']:+.1e}) MMCS {row['mmcs']:.4f}; {row['dense_s']:.1f} s vs {row['sparse_s']:.1f} s")
            rows.append(row)
    return rows
