"""Compiled loops of the sparse co-firing state on the CPU (ingest.cofiring.sparse.CoFiring): one pass that
multiplies a token chunk out, merges it into a block of pairs and scores them for the cap policy, and the
prune that keeps the pairs above a threshold.

`merge_products` is Gustavson's row-by-row sparse product (what scipy's `Aᵀ·B` runs) with two dense
accumulators instead of one: for a-feature i it starts from the block's stored pairs of row i, then adds
a·b and 1 for every (token, b) where a fires, so Σab and the co-firing count come out of one walk over
the same terms, already merged (scipy needs a symbolic pass, a numeric pass per product, and a merge).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _merge(at_ptr, at_idx, at_val, b_ptr, b_idx, b_val, r0, r1, old_ptr, old_idx, old_val, d_b, bound,
           iq_a, iq_b, if_a, if_b):
    n_rows = r1 - r0
    out_ptr = np.zeros(n_rows + 1, np.int64)
    out_idx = np.empty(bound, np.int32)
    out_val = np.empty(bound, np.complex128)
    out_score = np.empty(bound)
    acc = np.zeros(d_b, np.complex128)  # Σab + i·count side by side: one cache line per touched pair
    mark = np.full(d_b, -1, np.int32)
    nnz = 0
    for i in range(n_rows):
        start = nnz
        for p in range(old_ptr[i], old_ptr[i + 1]):
            j = old_idx[p]
            mark[j] = i
            acc[j] = old_val[p]
            out_idx[nnz] = j
            nnz += 1
        for p in range(at_ptr[r0 + i], at_ptr[r0 + i + 1]):
            t = at_idx[p]
            a = at_val[p]
            for q in range(b_ptr[t], b_ptr[t + 1]):
                j = b_idx[q]
                if mark[j] != i:
                    mark[j] = i
                    acc[j] = 0.0
                    out_idx[nnz] = j
                    nnz += 1
                acc[j] += complex(a * b_val[q], 1.0)
        for p in range(start, nnz):
            j = out_idx[p]
            v = acc[j]
            out_val[p] = v
            out_score[p] = max(v.real * iq_a[r0 + i] * iq_b[j], v.imag * if_a[r0 + i] * if_b[j])
        out_ptr[i + 1] = nnz
    return out_ptr, out_idx[:nnz], out_val[:nnz], out_score[:nnz]


def merge_products(At, B, r0: int, r1: int, old, inv: tuple[np.ndarray, ...]):
    """Rows r0:r1 of `At` [d_a, t] (CSR, float64) times `B` [t, d_b] (CSR, float64), merged into `old` (the
    block's [r1 − r0, d_b] CSR of Σab + i·count): (indptr, indices, data, score) of the new block, where
    score is the cap policy's max(Σab/√(Σa²Σb²), count/√(fires_a·fires_b)) and `inv` holds the four
    1/√ per-feature factors (1/√Σa², 1/√Σb², 1/√fires_a, 1/√fires_b). The arrays are views of buffers
    sized for the worst case: keep copies (or a pruned block), not them."""
    lo, hi = At.indptr[r0], At.indptr[r1]
    flops = int(np.diff(B.indptr)[At.indices[lo:hi]].sum())
    bound = old.nnz + min(flops, (r1 - r0) * B.shape[1])
    return _merge(At.indptr, At.indices, At.data, B.indptr, B.indices, B.data, r0, r1, old.indptr, old.indices,
                  old.data, B.shape[1], bound, *inv)


@numba.njit(cache=True)
def keep_above(ptr, idx, val, score, theta):
    """The block without its pairs scoring ≤ theta: (indptr, indices, data), order kept."""
    n = 0
    for p in range(len(idx)):
        n += score[p] > theta
    out_ptr = np.zeros(len(ptr), np.int64)
    out_idx = np.empty(n, idx.dtype)
    out_val = np.empty(n, val.dtype)
    n = 0
    for i in range(len(ptr) - 1):
        for p in range(ptr[i], ptr[i + 1]):
            if score[p] > theta:
                out_idx[n] = idx[p]
                out_val[n] = val[p]
                n += 1
        out_ptr[i + 1] = n
    return out_ptr, out_idx, out_val
