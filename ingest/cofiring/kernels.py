"""Compiled loops of the co-firing states on the CPU: for the capped sparse state (atlas_ingest.cofiring.sparse.SparseCoFiring)
one pass that multiplies a token chunk out, merges it into a block of pairs and scores them for the cap policy,
and the prune that keeps the pairs above a threshold; for the exact state (atlas_ingest.cofiring.exact) the scatter
of a token chunk's products into dense accumulators.

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


@numba.njit(cache=True, parallel=True)
def _scatter(at_ptr, at_idx, at_val, b_ptr, b_idx, b_val, sab, cnt):
    for i in numba.prange(len(at_ptr) - 1):  # a row per a-feature: no two threads write one cell
        row_s, row_c = sab[i], cnt[i]
        for p in range(at_ptr[i], at_ptr[i + 1]):
            t = at_idx[p]
            a = at_val[p]
            for q in range(b_ptr[t], b_ptr[t + 1]):
                j = b_idx[q]
                row_s[j] += a * b_val[q]
                row_c[j] += 1


def scatter_products(At, B, sab: np.ndarray, cnt: np.ndarray) -> None:
    """Add `At` [d_a, t] · `B` [t, d_b] (CSR, float64) into the dense Σab `sab` [d_a, d_b] (float64) and
    1[At]ᵀ·1[B] into `cnt` [d_a, d_b] (int32): Gustavson's product whose output row is the accumulator row
    itself (no symbolic pass, no merge). Each cell is summed in token order by one thread, so the sums do
    not depend on the thread count."""
    _scatter(At.indptr, At.indices, At.data, B.indptr, B.indices, B.data, sab, cnt)


@numba.njit(cache=True, inline="always")
def _insert(vals, idx, v, j):
    """Put (v, j) into the descending list vals/idx, after the entries equal to v (their index is lower)."""
    p = len(vals) - 1
    while p > 0 and vals[p - 1] < v:
        vals[p] = vals[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    vals[p] = v
    idx[p] = j


@numba.njit(cache=True)
def _topk_dense(sab, s_a, s_b, ia, ib, n, row_v, row_i, col_v, col_i):
    d_a, d_b = sab.shape
    k_a, k_b = row_v.shape[1], col_v.shape[1]
    for i in range(d_a):
        sa, a = s_a[i], ia[i]
        rv, ri = row_v[i], row_i[i]
        for j in range(d_b):
            r = (sab[i, j] - sa * s_b[j] / n) * a * ib[j]
            if r > rv[k_a - 1]:
                _insert(rv, ri, r, j)
            if r > col_v[j, k_b - 1]:
                _insert(col_v[j], col_i[j], r, i)


def topk_dense(sab: np.ndarray, s_a, s_b, inv_a, inv_b, n: int, k: int):
    """Each row's and each column's k highest Pearson r of a dense state (Σab `sab` [d_a, d_b], per-feature sums
    s and 1/√(var·n) `inv`), in one pass over the cells: ((a2b score, index), (b2a score, index)), best first,
    equal scores by lower index (what a stable sort of a dense row gives)."""
    d_a, d_b = sab.shape
    k_a, k_b = min(k, d_b), min(k, d_a)
    row_v, row_i = np.full((d_a, k_a), -np.inf), np.zeros((d_a, k_a), np.int64)
    col_v, col_i = np.full((d_b, k_b), -np.inf), np.zeros((d_b, k_b), np.int64)
    if k_a and k_b:
        _topk_dense(sab, s_a, s_b, inv_a, inv_b, float(max(n, 1)), row_v, row_i, col_v, col_i)
    return (row_v, row_i), (col_v, col_i)
