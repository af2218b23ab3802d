"""Co-firing statistics of SAE pairs over the same tokens: streamed, sparse × sparse, exact up to a cap.

SAE activations are non-negative and sparse (L0 ≈ 70 of 16k features), so per token batch only the
co-firing pairs (a, b) are touched: the state is

- per feature (O(d)): n, Σa, Σa², firing count, and the same for b;
- per co-firing pair: Σab and the number of tokens where both fire, one sparse [d_a, d_b] CSR matrix
  holding Σab + i·count as complex128 (one sort order, one merge for both; counts are exact integers).

Each chunk of tokens adds `Aᵀ·B` and `1[A>0]ᵀ·1[B>0]` (sparse × sparse, cost tokens × L0_a × L0_b) into
that matrix, block of a-features by block, so one product's output stays small: on the CPU both sums come
out of one compiled pass that also merges and scores (atlas_ingest.cofiring.kernels), on CUDA from two torch
products. Pearson r is exact for every pair, including pairs that never co-fire (Σab = 0, so r follows
from the means alone); P(b|a) and Jaccard come from the counts. Where a pair's full [d_a, d_b] state fits
a GPU, or on the CPU the memory budget, `atlas_ingest.cofiring.new_state` gives a dense exact state instead
(atlas_ingest.cofiring.dense, atlas_ingest.cofiring.exact; docs/design.md, Co-firing states): this one is for the pairs
past those.

Cap policy (long corpora, wide SAEs): when a block holds more than its share of `max_pairs`, its pairs
whose value cosine Σab/√(Σa²Σb²) AND firing cosine count/√(fires_a·fires_b) are both below θ are
dropped, with θ the smallest value that halves the block. A dropped pair that co-fires again restarts from 0,
so its Σab and count may miss at most θ·√(Σa²Σb²) and θ·√(fires_a·fires_b) per prune: with Θ = Σθ over
its block's prunes, |Δr| ≤ Θ·√(Σa²Σb²/(Var_a·Var_b)) (≈ Θ for sparse features), and P(b|a), Jaccard are low by
at most Θ·√(fires_b/fires_a). `SparseCoFiring.error_bound` is Θ (0.0 = exact); the bench measures the real cost.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from atlas.match.candidates import Candidates
from atlas_ingest.cofiring import kernels
from atlas_ingest.cofiring.state import PairState

PAIR_BYTES = 20
"""A stored pair: column index (int32) and Σab + i·count (complex128)."""
MAX_PAIRS = 32_000_000
"""Default cap on co-firing pairs held (PAIR_BYTES each: 0.64 GB at most)."""
CHUNK_NNZ = 8_000_000
"""Pending non-zeros multiplied out at once (about 0.3 GB with their copies; 57k tokens at L0 70 × 2)."""
BLOCK_CELLS = 8_000_000
"""a-feature rows per product block: this many cells over d_b (bounds one product's output)."""


def device() -> torch.device | None:
    """Where the sparse products run, chosen once: torch on CUDA when it sees a GPU, else None (scipy)."""
    return torch.device("cuda") if torch.cuda.is_available() else None


@contextlib.contextmanager
def _torch_csr():
    """torch warns on first use that its sparse CSR support is in beta: silenced around our calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        yield


def to_csr(x) -> sp.csr_matrix:
    """[t, d] activations (torch dense or sparse, numpy, scipy) as scipy CSR with int32 indices."""
    if sp.issparse(x):
        m = x.tocsr()
    elif isinstance(x, torch.Tensor):
        with _torch_csr():
            c = x.detach().to_sparse_csr()
        m = sp.csr_matrix((c.values().cpu().numpy(), c.col_indices().cpu().numpy().astype(np.int32),
                           c.crow_indices().cpu().numpy().astype(np.int64)), shape=tuple(x.shape))
    else:
        m = sp.csr_matrix(np.asarray(x))
    m.eliminate_zeros()
    m.sort_indices()
    if m.indptr[-1] < 2**31:
        m.indptr = m.indptr.astype(np.int32)
        m.indices = m.indices.astype(np.int32)
    return m


def _spgemm(x: sp.csr_matrix, y: sp.csr_matrix, dev: torch.device | None) -> sp.csr_matrix:
    """x @ y, both sparse: scipy when dev is None, else torch on dev (cuSPARSE on CUDA)."""
    if dev is None:  # columns come unsorted within rows, in an order set by the structure alone
        return (x @ y).tocsr()

    def t(m):
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data), m.shape, device=dev, check_invariants=False)

    with _torch_csr():
        z = (t(x) @ t(y)).to_sparse_csr()
    out = sp.csr_matrix((z.values().cpu().numpy(), z.col_indices().cpu().numpy(), z.crow_indices().cpu().numpy()),
                        shape=(x.shape[0], y.shape[1]))
    out.sort_indices()
    return out


class BatchQueue:
    """Batches taken by a sparse co-firing state (SparseCoFiring, exact.ExactCoFiring): checked, counted into the
    per-feature sums the state's `_sums()` gives, and kept until they hold `chunk_nnz` non-zeros, then `flush()`."""

    def add(self, a, b) -> None:
        """One batch: row t of `a` [t, d_a] and of `b` [t, d_b] is the same token."""
        A, B = to_csr(a), to_csr(b)
        if A.shape[0] != B.shape[0] or A.shape[1] != self.d_a or B.shape[1] != self.d_b:
            raise ValueError(f"batch shapes {A.shape} and {B.shape} do not fit a pair of widths ({self.d_a}, {self.d_b})")
        for m in (A, B):
            if len(m.data) and m.data.min() < 0:
                raise ValueError("activations must be non-negative (SAE feature activations)")
        self.n += A.shape[0]
        for m, (s, q, f) in zip((A, B), self._sums()):
            d = len(s)
            v = m.data.astype(np.float64)
            s += np.bincount(m.indices, v, d)
            q += np.bincount(m.indices, v * v, d)
            f += np.bincount(m.indices, minlength=d)
        self._pending.append((A, B))
        self._nnz += A.nnz + B.nnz
        if self._nnz >= self.chunk_nnz:
            self.flush()

    def _take_pending(self) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The pending batches as (Aᵀ, B) in float64 CSR, the queue emptied."""
        A = sp.vstack([p[0] for p in self._pending], format="csr")
        B = sp.vstack([p[1] for p in self._pending], format="csr").astype(np.float64, copy=False)
        self._pending, self._nnz = [], 0
        return A.T.tocsr().astype(np.float64, copy=False), B


@dataclass
class SparseCoFiring(BatchQueue, PairState):
    """Streaming co-firing state of one SAE pair (see the module docstring)."""

    d_a: int
    d_b: int
    max_pairs: int = MAX_PAIRS
    chunk_nnz: int = CHUNK_NNZ
    """Multiply pending batches out once they hold this many non-zeros (a and b together)."""
    dev: torch.device | None = field(default_factory=device)
    n: int = 0

    def __post_init__(self):
        self.s_a, self.q_a = np.zeros(self.d_a), np.zeros(self.d_a)
        self.s_b, self.q_b = np.zeros(self.d_b), np.zeros(self.d_b)
        self.f_a, self.f_b = np.zeros(self.d_a, np.int64), np.zeros(self.d_b, np.int64)
        rows = max(1, min(self.d_a, BLOCK_CELLS // max(self.d_b, 1)))
        self.starts = list(range(0, self.d_a, rows))
        self.blocks = [sp.csr_matrix((min(rows, self.d_a - r), self.d_b), dtype=np.complex128) for r in self.starts]
        self.thetas: list[list[float]] = [[] for _ in self.starts]
        self.peak_pairs = 0
        self.prunes = 0
        self._pending: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        self._nnz = 0

    # -- accumulation (add: BatchQueue) -----------------------------------------------------------
    def _sums(self):
        return (self.s_a, self.q_a, self.f_a), (self.s_b, self.q_b, self.f_b)

    def flush(self) -> None:
        """Multiply the pending tokens out, one block of a-features at a time (so that each product
        sums over many tokens, yet its output stays within BLOCK_CELLS), and merge into the pair blocks:
        on the CPU in one compiled pass per block (atlas_ingest.cofiring.kernels), on a device by two torch products."""
        if not self._pending:
            return
        At, B = self._take_pending()
        with np.errstate(divide="ignore"):  # features that never fired have no stored pairs
            inv = tuple(1.0 / np.sqrt(x.astype(np.float64)) for x in (self.q_a, self.q_b, self.f_a, self.f_b))
        for k, r0 in enumerate(self.starts):
            r1 = r0 + self.blocks[k].shape[0]
            if At.indptr[r0] == At.indptr[r1]:
                continue
            if self.dev is None:
                ptr, idx, val, score = kernels.merge_products(At, B, r0, r1, self.blocks[k], inv)
                if len(idx) > self._cap(k):
                    self._prune(k, ptr, idx, val, score)
                else:
                    self.blocks[k] = sp.csr_matrix((val.copy(), idx.copy(), ptr), shape=self.blocks[k].shape)
            else:
                chunk = self._products(At[r0:r1], B)
                p = self.blocks[k] = self.blocks[k] + chunk if self.blocks[k].nnz else chunk
                if p.nnz > self._cap(k):
                    rows = r0 + np.repeat(np.arange(p.shape[0]), np.diff(p.indptr))
                    self._prune(k, p.indptr, p.indices, p.data,
                                np.maximum(p.data.real * inv[0][rows] * inv[1][p.indices],
                                           p.data.imag * inv[2][rows] * inv[3][p.indices]))
        self.peak_pairs = max(self.peak_pairs, sum(b.nnz for b in self.blocks))

    def _products(self, blk: sp.csr_matrix, B: sp.csr_matrix) -> sp.csr_matrix:
        """blk·B and 1[blk]·1[B] on self.dev (torch), as one CSR of Σab + i·count."""
        ones_b = sp.csr_matrix((np.ones(B.nnz), B.indices, B.indptr), shape=B.shape)  # shares the structure
        s = _spgemm(blk, B, self.dev)
        blk.data[:] = 1.0
        c = _spgemm(blk, ones_b, self.dev)  # same structure, so the same pairs in the same order
        if s.nnz != c.nnz:  # both are sums of positive terms over the same co-firing tokens
            raise ValueError("activation products underflowed to zero; rescale the activations")
        data = np.empty(s.nnz, np.complex128)
        data.real, data.imag = s.data, c.data
        return sp.csr_matrix((data, s.indices, s.indptr), shape=s.shape)

    def _cap(self, k: int) -> int:
        return max(1, self.max_pairs * self.blocks[k].shape[0] // self.d_a)

    def _prune(self, k: int, ptr, idx, val, score) -> None:
        """Store block k (CSR arrays) without its weakest pairs, at most half its cap (see the cap policy
        above); `score` is each pair's."""
        keep_n = self._cap(k) // 2
        theta = float(np.partition(score, len(score) - keep_n - 1)[len(score) - keep_n - 1])
        ptr, idx, val = kernels.keep_above(ptr, idx, val, score, theta)
        self.blocks[k] = sp.csr_matrix((val, idx, ptr), shape=self.blocks[k].shape)
        self.thetas[k].append(theta)
        self.prunes += 1

    @property
    def pairs(self) -> sp.csr_matrix:
        """All pairs as one [d_a, d_b] CSR of Σab + i·count, rows' columns sorted. The blocks become this one
        matrix (more batches may still be added; they then multiply out as a single block)."""
        self.flush()
        if len(self.blocks) > 1:
            for b in self.blocks:
                b.sort_indices()
            stacked = sp.vstack(self.blocks, format="csr")
            self.blocks, self.starts, self.thetas = [stacked], [0], [[self.error_bound]] if self.error_bound else [[]]
        self.blocks[0].sort_indices()
        return self.blocks[0]

    @property
    def error_bound(self) -> float:
        """Θ: the largest sum of prune thresholds over the pair blocks; 0.0 when every co-firing pair
        was kept (exact)."""
        return float(max((sum(t) for t in self.thetas), default=0.0))

    # -- statistics ------------------------------------------------------------------------------
    def _moments(self):
        """Per feature: var·n (0 for dead features) and u = mean/sd, so a never co-firing pair has r = −u_a·u_b."""
        n = max(self.n, 1)
        out = []
        for s, q in ((self.s_a, self.q_a), (self.s_b, self.q_b)):
            v = np.maximum(q - s * s / n, 0.0)
            live = v > 0
            inv = np.where(live, 1.0 / np.sqrt(np.where(live, v, 1.0)), 0.0)
            out.append((inv, s * inv / np.sqrt(n)))
        return out

    def _pair_r(self, rows, cols, sab) -> np.ndarray:
        (inv_a, _), (inv_b, _) = self._moments()
        return (sab - self.s_a[rows] * self.s_b[cols] / max(self.n, 1)) * inv_a[rows] * inv_b[cols]

    def lookup(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(Σab, count) of each pair (rows[e], cols[e]); 0 for pairs that never co-fire."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        vals = np.zeros(len(rows), np.complex128)
        if len(rows) and self.pairs.nnz:
            p = self.pairs
            # keys of stored pairs are sorted (CSR, sorted indices): one searchsorted finds them all
            keys = np.repeat(np.arange(self.d_a, dtype=np.int64), np.diff(p.indptr)) * self.d_b + p.indices
            q = rows * self.d_b + cols
            pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
            hit = keys[pos] == q
            vals[hit] = p.data[pos[hit]]
        return vals.real, vals.imag

    def dense(self) -> dict[str, np.ndarray]:
        """The same statistics for every pair as [d_a, d_b] matrices; only for small widths."""
        self._check_dense()
        rows, cols = np.divmod(np.arange(self.d_a * self.d_b), self.d_b)
        return {k: v.reshape(self.d_a, self.d_b) for k, v in self.stats(rows, cols).items()}

    def topk(self, k: int) -> Candidates:
        """Each feature's k highest-r partners in both directions, exact over all pairs: stored pairs by
        their r; pairs that never co-fire (r = −u_a·u_b ≤ 0) enter only where a row has too few better ones."""
        (_, u_a), (_, u_b) = self._moments()
        p = self.pairs
        r = np.empty(p.nnz)
        step = max(1, BLOCK_CELLS // max(self.d_b, 1))
        for r0 in range(0, self.d_a, step):  # by row blocks, so the temporaries stay small
            lo, hi = p.indptr[r0], p.indptr[min(r0 + step, self.d_a)]
            rows = np.repeat(np.arange(r0, min(r0 + step, self.d_a)), np.diff(p.indptr[r0:r0 + step + 1]))
            r[lo:hi] = self._pair_r(rows, p.indices[lo:hi], p.data[lo:hi].real)
        r = sp.csr_matrix((r, p.indices, p.indptr), shape=p.shape)
        a2b = _row_topk(r, u_a, u_b, min(k, self.d_b))
        b2a = _row_topk(r.T.tocsr(), u_b, u_a, min(k, self.d_a))
        return Candidates(a2b[0], a2b[1], b2a[0], b2a[1])


def _row_topk(r: sp.csr_matrix, u_row: np.ndarray, u_col: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (score, column) per row of r, where absent entries are worth −u_row[i]·u_col[j]."""
    n_rows, n_cols = r.shape
    score, index = np.full((n_rows, k), -np.inf), np.zeros((n_rows, k), np.int64)
    order = np.argsort(u_col, kind="stable")  # best absent partners first (smallest u)
    best_absent = -u_row * u_col[order[0]] if n_cols else np.zeros(n_rows)
    ptr, idx, val = r.indptr, r.indices, r.data
    for i in range(n_rows):
        lo, hi = ptr[i], ptr[i + 1]
        v, c = val[lo:hi], idx[lo:hi]
        if len(v) > k:
            top = np.argpartition(-v, k - 1)[:k]
            v, c = v[top], c[top]
        if len(v) < k or v.min() < best_absent[i]:  # absent pairs may rank: add the best k of them
            absent = order[:k + hi - lo]
            absent = absent[~np.isin(absent, idx[lo:hi])][:k]
            v = np.concatenate([v, -u_row[i] * u_col[absent]])
            c = np.concatenate([c, absent])
        top = np.lexsort((c, -v))[:k]  # ties by column, as a stable sort of a dense row would break them
        score[i], index[i] = v[top], c[top]
    return score, index


def accumulate(batches_a, batches_b, max_pairs: int = MAX_PAIRS, dev: torch.device | None = None) -> SparseCoFiring:
    """Co-firing state over paired activation batches (row t of both is the same token)."""
    state = None
    for A, B in zip(batches_a, batches_b, strict=True):
        if state is None:
            state = SparseCoFiring(A.shape[1], B.shape[1], max_pairs=max_pairs, dev=dev if dev is not None else device())
        state.add(A, B)
    if state is None:
        raise ValueError("no activations to correlate")
    return state.finish()
