"""Co-firing statistics of SAE pairs over the same tokens: streamed, sparse × sparse, exact up to a cap.

SAE activations are non-negative and sparse (L0 ≈ 70 of 16k features), so per token batch only the
co-firing pairs (a, b) are touched: the state is

- per feature (O(d)): n, Σa, Σa², firing count, and the same for b;
- per co-firing pair: Σab and the number of tokens where both fire, one sparse [d_a, d_b] CSR matrix
  holding Σab + i·count as complex128 (one sort order, one merge for both; counts are exact integers).

Each chunk of tokens adds `Aᵀ·B` and `1[A>0]ᵀ·1[B>0]` (two sparse × sparse products whose cost is
tokens × L0_a × L0_b) into that matrix, block of a-features by block, so one product's output stays small. Pearson r is exact for every pair, including pairs that never
co-fire (Σab = 0, so r follows from the means alone); P(b|a) and Jaccard come from the counts.

Cap policy (long corpora, wide SAEs): when a block holds more than its share of `max_pairs`, its pairs
whose value cosine Σab/√(Σa²Σb²) AND firing cosine count/√(fires_a·fires_b) are both below θ are
dropped, with θ the smallest value that halves the block. A dropped pair that co-fires again restarts from 0,
so its Σab and count may miss at most θ·√(Σa²Σb²) and θ·√(fires_a·fires_b) per prune: with Θ = Σθ over
its block's prunes, |Δr| ≤ Θ·√(Σa²Σb²/(Var_a·Var_b)) (≈ Θ for sparse features), and P(b|a), Jaccard are low by
at most Θ·√(fires_b/fires_a). `CoFiring.error_bound` is Θ (0.0 = exact); the bench measures the real cost.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from atlas.encode import decode, encode
from atlas.match.candidates import Candidates
from atlas.sae import SAERecord
from ingest import cofiring_kernels as kernels
from ingest import dense_cofiring
from ingest.dense_cofiring import DenseCoFiring

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

MAX_PAIRS = 32_000_000
"""Default cap on co-firing pairs held (20 bytes each: 0.64 GB at most)."""
CHUNK_NNZ = 8_000_000
"""Pending non-zeros multiplied out at once (about 0.3 GB with their copies; 57k tokens at L0 70 × 2)."""
BLOCK_CELLS = 8_000_000
"""a-feature rows per product block: this many cells over d_b (bounds one product's output)."""
DENSE_LIMIT = 4096 * 4096
"""Widest d_a × d_b for which `CoFiring.dense` builds full matrices (tests, small pairs)."""


def device() -> torch.device | None:
    """Where the sparse products run, chosen once: torch on CUDA when it sees a GPU, else None (scipy)."""
    return torch.device("cuda") if torch.cuda.is_available() else None


def to_csr(x) -> sp.csr_matrix:
    """[t, d] activations (torch dense or sparse, numpy, scipy) as scipy CSR with int32 indices."""
    if sp.issparse(x):
        m = x.tocsr()
    elif isinstance(x, torch.Tensor):
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
                                       torch.from_numpy(m.data), m.shape, device=dev)

    z = (t(x) @ t(y)).to_sparse_csr()
    out = sp.csr_matrix((z.values().cpu().numpy(), z.col_indices().cpu().numpy(), z.crow_indices().cpu().numpy()),
                        shape=(x.shape[0], y.shape[1]))
    out.sort_indices()
    return out


@dataclass
class CoFiring:
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

    # -- accumulation --------------------------------------------------------------------------
    def add(self, a, b) -> None:
        """One batch: row t of `a` [t, d_a] and of `b` [t, d_b] is the same token."""
        A, B = to_csr(a), to_csr(b)
        if A.shape[0] != B.shape[0] or A.shape[1] != self.d_a or B.shape[1] != self.d_b:
            raise ValueError(f"batch shapes {A.shape} and {B.shape} do not fit a pair of widths ({self.d_a}, {self.d_b})")
        for m in (A, B):
            if len(m.data) and m.data.min() < 0:
                raise ValueError("activations must be non-negative (SAE feature activations)")
        self.n += A.shape[0]
        for m, s, q, f in ((A, self.s_a, self.q_a, self.f_a), (B, self.s_b, self.q_b, self.f_b)):
            d = len(s)
            v = m.data.astype(np.float64)
            s += np.bincount(m.indices, v, d)
            q += np.bincount(m.indices, v * v, d)
            f += np.bincount(m.indices, minlength=d)
        self._pending.append((A, B))
        self._nnz += A.nnz + B.nnz
        if self._nnz >= self.chunk_nnz:
            self.flush()

    def flush(self) -> None:
        """Multiply the pending tokens out, one block of a-features at a time (so that each product
        sums over many tokens, yet its output stays within BLOCK_CELLS), and merge into the pair blocks:
        on the CPU in one compiled pass per block (ingest.cofiring_kernels), on a device by two torch products."""
        if not self._pending:
            return
        A = sp.vstack([p[0] for p in self._pending], format="csr")
        B = sp.vstack([p[1] for p in self._pending], format="csr").astype(np.float64, copy=False)
        self._pending, self._nnz = [], 0
        At = A.T.tocsr().astype(np.float64, copy=False)
        del A
        with np.errstate(divide="ignore"):  # features that never fired have no stored pairs
            inv = tuple(1.0 / np.sqrt(x.astype(np.float64)) for x in (self.q_a, self.q_b, self.f_a, self.f_b))
        for k, r0 in enumerate(self.starts):
            r1 = r0 + self.blocks[k].shape[0]
            if At.indptr[r0] == At.indptr[r1]:
                continue
            if self.dev is None:
                ptr, idx, val, score = kernels.merge_products(At, B, r0, r1, self.blocks[k], inv)
                self.blocks[k] = sp.csr_matrix((val, idx, ptr), shape=self.blocks[k].shape)
            else:
                chunk = self._products(At[r0:r1], B)
                self.blocks[k] = self.blocks[k] + chunk if self.blocks[k].nnz else chunk
                score = None
            if self.blocks[k].nnz > self._cap(k):
                self._prune(k, score, inv)
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

    def _prune(self, k: int, score: np.ndarray | None, inv: tuple[np.ndarray, ...]) -> None:
        """Drop block k's weakest pairs until it holds at most half its cap (see the cap policy above);
        `score` is each stored pair's, when the merge computed them."""
        p = self.blocks[k]
        if score is None:
            rows = self.starts[k] + np.repeat(np.arange(p.shape[0]), np.diff(p.indptr))
            score = np.maximum(p.data.real * inv[0][rows] * inv[1][p.indices], p.data.imag * inv[2][rows] * inv[3][p.indices])
        keep_n = self._cap(k) // 2
        theta = float(np.partition(score, len(score) - keep_n - 1)[len(score) - keep_n - 1])
        ptr, idx, val = kernels.keep_above(p.indptr, p.indices, p.data, score, theta)
        self.blocks[k] = sp.csr_matrix((val, idx, ptr), shape=p.shape)
        self.thetas[k].append(theta)
        self.prunes += 1

    def finish(self) -> CoFiring:
        """Multiply out what is pending."""
        self.flush()
        return self

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

    def _r(self, rows, cols, sab) -> np.ndarray:
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

    def stats(self, rows, cols) -> dict[str, np.ndarray]:
        """Pearson r, co-firing count, P(b fires | a fires) and Jaccard of firing sets for given pairs."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        sab, cnt = self.lookup(rows, cols)
        fa, fb = self.f_a[rows].astype(np.float64), self.f_b[cols].astype(np.float64)
        return {"pearson": self._r(rows, cols, sab), "cofire": cnt, "p_b_given_a": cnt / np.maximum(fa, 1),
                "jaccard": cnt / np.maximum(fa + fb - cnt, 1)}

    def dense(self) -> dict[str, np.ndarray]:
        """The same statistics for every pair as [d_a, d_b] matrices; only for small widths."""
        if self.d_a * self.d_b > DENSE_LIMIT:
            raise ValueError(f"{self.d_a} x {self.d_b} is too wide for dense statistics; use stats() or topk()")
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
            r[lo:hi] = self._r(rows, p.indices[lo:hi], p.data[lo:hi].real)
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


def new_state(d_a: int, d_b: int, dev: torch.device | None = None, dense: bool | None = None,
              max_pairs: int = MAX_PAIRS) -> CoFiring | DenseCoFiring:
    """The co-firing state of a d_a × d_b pair on dev (default: CUDA when torch sees it, else the CPU):
    dense and exact (`DenseCoFiring`) when its accumulators fit the device's free memory, else the sparse
    capped `CoFiring`. On the CPU the sparse state is the default past tiny widths; `dense` forces either."""
    dev = dev if dev is not None else device()
    if dense is None:
        dense = dense_cofiring.fits(d_a, d_b, dev)
    if dense:
        return DenseCoFiring(d_a, d_b, dev=dev if dev is not None else torch.device("cpu"))
    return CoFiring(d_a, d_b, max_pairs=max_pairs, dev=dev)


# -- streams -------------------------------------------------------------------------------------

def activation_batches(rec: SAERecord, xs: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Feature activations [t, d_sae] of `rec`, one batch of model activations at a time."""
    m = rec.meta
    for x in xs:
        yield encode(rec.weights, x, m.arch, m.k, m.extra.get("apply_b_dec_to_input", True))


def accumulate(batches_a, batches_b, max_pairs: int = MAX_PAIRS, dev: torch.device | None = None,
               progress=None) -> CoFiring:
    """Co-firing state over paired activation batches (row t of both is the same token)."""
    state = None
    for A, B in zip(batches_a, batches_b, strict=True):
        if state is None:
            state = CoFiring(A.shape[1], B.shape[1], max_pairs=max_pairs, dev=dev if dev is not None else device())
        state.add(A, B)
        if progress:
            progress(A.shape[0])
    if state is None:
        raise ValueError("no activations to correlate")
    return state.finish()


# -- compositions and examples: a second streamed pass over the same batches ---------------------

@dataclass
class Compositions:
    """Counts behind AND / OR / PASS for each b-feature and its `parents` most correlated a-features."""

    parents: np.ndarray  # [d_b, P] a-features, −1 where fewer
    pairs: np.ndarray  # [Q, 2] slot pairs (p1, p2) with p1 < p2
    f_b: np.ndarray
    f_a: np.ndarray
    single: np.ndarray  # [d_b, P] tokens where b and parent p fire
    both: np.ndarray  # [d_b, Q] tokens where parents p1 and p2 fire
    triple: np.ndarray  # [d_b, Q] tokens where b, p1 and p2 fire

    @classmethod
    def plan(cls, cand: Candidates, state: CoFiring, parents: int = 5, min_r: float = 0.05) -> Compositions:
        par = cand.b2a_index[:, :parents].astype(np.int64).copy()
        par[cand.b2a_score[:, :parents] <= min_r] = -1
        P = par.shape[1]
        pairs = np.array([(x, y) for x in range(P) for y in range(x + 1, P)], np.int64).reshape(-1, 2)
        d_b = len(par)
        return cls(par, pairs, state.f_b, state.f_a, np.zeros((d_b, P)), np.zeros((d_b, len(pairs))),
                   np.zeros((d_b, len(pairs))))

    def add(self, a, b) -> None:
        """Count on one batch (the same tokens as the first pass, any batching)."""
        A, B = to_csr(a), to_csr(b)
        d_a = A.shape[1]
        keys_a = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr)) * d_a + A.indices
        tok_b = np.repeat(np.arange(B.shape[0], dtype=np.int64), np.diff(B.indptr))
        par = self.parents[B.indices]  # [nnz_b, P]: for each firing (token, b), its parents
        q = tok_b[:, None] * d_a + par
        pos = np.minimum(np.searchsorted(keys_a, q), max(len(keys_a) - 1, 0))
        fires = (par >= 0) & (keys_a[pos] == q) if len(keys_a) else np.zeros_like(par, bool)
        j = B.indices
        for p in range(par.shape[1]):
            self.single[:, p] += np.bincount(j, fires[:, p], len(self.parents))
        for s, (p1, p2) in enumerate(self.pairs):
            self.triple[:, s] += np.bincount(j, fires[:, p1] & fires[:, p2], len(self.parents))
        # parents firing together regardless of b: walk the rarer parent's tokens, look up the other
        csc = A.tocsc()
        for s, (p1, p2) in enumerate(self.pairs):
            x, y = self.parents[:, p1], self.parents[:, p2]
            ok = (x >= 0) & (y >= 0)
            swap = ok & (self.f_a[np.maximum(x, 0)] > self.f_a[np.maximum(y, 0)])
            lo, hi = np.where(swap, y, x), np.where(swap, x, y)
            self.both[:, s] += _co_count(csc, keys_a, lo, hi, ok)

    def find(self, pearson_top: np.ndarray, dec_cos_top: np.ndarray, min_jaccard: float = 0.5,
             margin: float = 0.15, pass_r: float = 0.9, pass_cos: float = 0.9) -> list[tuple]:
        """(feature_b, kind, [parents], score) for layer-b features that act as a quasi-boolean combination
        of layer-a features (Balcells et al.). On firing sets over the same tokens:
        - PASS: the best parent has Pearson r ≥ 0.9 and decoder cosine ≥ 0.9 (the feature is carried through);
        - AND:  two parents whose joint firing (both fire) has Jaccard ≥ 0.5 with b's firing and beats the
                best single parent's Jaccard by ≥ 0.15;
        - OR:   the same for the union of the two parents' firing (either fires).
        Parents are b's most correlated a-features (r > 0.05); score is the Jaccard (r for PASS).
        `pearson_top` and `dec_cos_top` are [d_b, P] for the planned parents."""
        fb = self.f_b[:, None].astype(np.float64)
        fpar = np.where(self.parents >= 0, self.f_a[np.maximum(self.parents, 0)], 0).astype(np.float64)
        single = self.single / np.maximum(fb + fpar - self.single, 1)
        single = np.where(self.parents >= 0, single, 0.0)
        p1, p2 = self.pairs[:, 0], self.pairs[:, 1]
        valid = (self.parents[:, p1] >= 0) & (self.parents[:, p2] >= 0)
        and_j = self.triple / np.maximum(fb + self.both - self.triple, 1)
        inter_or = self.single[:, p1] + self.single[:, p2] - self.triple
        union = fpar[:, p1] + fpar[:, p2] - self.both
        or_j = inter_or / np.maximum(fb + union - inter_or, 1)
        out = []
        for j in np.flatnonzero(self.f_b > 0):
            if self.parents[j, 0] >= 0 and pearson_top[j, 0] >= pass_r and dec_cos_top[j, 0] >= pass_cos:
                out.append((int(j), "PASS", [int(self.parents[j, 0])], float(pearson_top[j, 0])))
                continue
            best_single = single[j].max(initial=0.0)
            found = None
            for s in np.flatnonzero(valid[j]):
                for kind, jac in (("AND", and_j[j, s]), ("OR", or_j[j, s])):
                    if jac >= min_jaccard and jac >= best_single + margin and (found is None or jac > found[3]):
                        found = (int(j), kind, sorted([int(self.parents[j, p1[s]]), int(self.parents[j, p2[s]])]),
                                 float(jac))
            if found:
                out.append(found)
        return out


def _co_count(csc: sp.csc_matrix, keys_a: np.ndarray, lo: np.ndarray, hi: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """For each slot j (where ok): tokens of this batch where features lo[j] and hi[j] both fire
    (csc: the batch [t, d_a]; keys_a: its sorted token * d_a + feature keys)."""
    out = np.zeros(len(lo))
    if not ok.any() or not len(keys_a):
        return out
    slots = np.flatnonzero(ok)
    starts, ends = csc.indptr[lo[slots]], csc.indptr[lo[slots] + 1]
    n = ends - starts
    if n.sum() == 0:
        return out
    owner = np.repeat(np.arange(len(slots)), n)
    offs = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    toks = csc.indices[np.repeat(starts, n) + offs].astype(np.int64)
    q = toks * csc.shape[1] + hi[slots][owner]
    pos = np.minimum(np.searchsorted(keys_a, q), len(keys_a) - 1)
    out[slots] = np.bincount(owner, keys_a[pos] == q, len(slots))
    return out


@dataclass
class TopTokens:
    """The n highest-keyed firing tokens per feature over a stream: a bounded heap per feature, kept
    as [d, n] arrays and merged batch by batch (only entries that beat a feature's current n-th pass)."""

    d: int
    n: int
    key: np.ndarray = field(init=False)
    value: np.ndarray = field(init=False)
    token: np.ndarray = field(init=False)

    def __post_init__(self):
        self.key = np.full((self.d, self.n), -np.inf)
        self.value = np.zeros((self.d, self.n), np.float32)
        self.token = np.full((self.d, self.n), -1, np.int64)

    def push(self, feature: np.ndarray, key: np.ndarray, value: np.ndarray, token: np.ndarray) -> None:
        beat = key > self.key[feature, -1]
        if not beat.any():
            return
        feature, key, value, token = feature[beat], key[beat], value[beat], token[beat]
        touched = np.unique(feature)
        f = np.concatenate([np.repeat(touched, self.n), feature])
        k = np.concatenate([self.key[touched].ravel(), key])
        v = np.concatenate([self.value[touched].ravel(), value])
        t = np.concatenate([self.token[touched].ravel(), token])
        order = np.lexsort((t, -k, f))
        f, k, v, t = f[order], k[order], v[order], t[order]
        start = np.searchsorted(f, touched)
        rank = np.arange(len(f)) - np.repeat(start, np.diff(np.r_[start, len(f)]))
        keep = rank < self.n
        self.key[f[keep], rank[keep]] = k[keep]
        self.value[f[keep], rank[keep]] = v[keep]
        self.token[f[keep], rank[keep]] = t[keep]


class Examples:
    """Top activations and a uniform random sample of firing tokens per feature, from streamed batches.
    The random sample is the n_random firing tokens with the smallest hash of (feature, token): a
    bottom-k sketch, so it needs no second pass and is the same however the stream is batched."""

    def __init__(self, d: int, n_top: int = 8, n_random: int = 3, seed: int = 0):
        self.top, self.rand = TopTokens(d, n_top), TopTokens(d, n_random + n_top)
        self.n_random, self.seed, self.offset = n_random, seed, 0

    def add(self, acts) -> None:
        m = to_csr(acts)
        tok = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) + self.offset
        f = m.indices.astype(np.int64)
        self.top.push(f, m.data.astype(np.float64), m.data.astype(np.float32), tok)
        h = (tok * 0x9E3779B1 + f * 0x85EBCA77 + self.seed) * 0xC2B2AE3D % (2**31 - 1)
        self.rand.push(f, -h.astype(np.float64), m.data.astype(np.float32), tok)
        self.offset += m.shape[0]

    def rows(self, tokens: dict[str, np.ndarray], tokenizer, context: int = 6) -> list[tuple]:
        """(feature, kind, activation, token index, context tokens, highlight position) per example."""
        docs, ids = tokens["doc"], tokens["token_ids"]
        out = []
        for j in range(self.top.d):
            top = [("top", v, t) for v, t in zip(self.top.value[j], self.top.token[j]) if t >= 0]
            chosen = {t for _, _, t in top}
            rand = [("random", v, t) for v, t in zip(self.rand.value[j], self.rand.token[j]) if t >= 0 and t not in chosen]
            for kind, v, t in top + rand[:self.n_random]:
                t = int(t)
                lo, hi = max(0, t - context), min(len(ids), t + context + 1)
                span = [i for i in range(lo, hi) if docs[i] == docs[t]]
                words = tokenizer.convert_ids_to_tokens([int(ids[i]) for i in span])
                out.append((j, kind, float(v), t, words, span.index(t)))
        return out


class Quality:
    """SAE Match's checks of a weight-based assignment fa[i] → fb[i] on real activations, streamed:
    matching score = mean P(b_j fires | a_i fires) over assigned pairs whose a fires at all, and the
    explained variance of encode_a(x_a) → permute → decode_b against x_b."""

    def __init__(self, b: SAERecord, fa: np.ndarray, fb: np.ndarray):
        self.b, self.fa, self.fb = b, torch.from_numpy(fa), torch.from_numpy(fb)
        self.sse = self.sx = self.sxx = 0.0
        self.sum_x = None
        self.n = 0

    @torch.no_grad()
    def add(self, acts_a: torch.Tensor, xb: torch.Tensor) -> None:
        moved = torch.zeros((len(xb), self.b.meta.d_sae))
        moved[:, self.fb] = acts_a[:, self.fa]
        recon = decode(self.b.weights, moved)
        xb = xb.double()
        self.sse += float(((xb - recon.double()) ** 2).sum())
        self.sxx += float((xb * xb).sum())
        self.sum_x = xb.sum(0) if self.sum_x is None else self.sum_x + xb.sum(0)
        self.n += len(xb)

    def result(self, state: CoFiring) -> dict:
        fa, fb = self.fa.numpy(), self.fb.numpy()
        fired = state.f_a[fa] > 0
        _, cnt = state.lookup(fa, fb)
        matching = float((cnt[fired] / state.f_a[fa][fired]).mean()) if fired.any() else None
        sst = self.sxx - float((self.sum_x ** 2).sum()) / max(self.n, 1) if self.sum_x is not None else 0.0
        return {"matching_score": matching, "explained_variance": 1 - self.sse / sst if sst > 0 else None}
