"""Dense exact co-firing state of one SAE pair: every (a, b) cell held, on the GPU when it fits.

Per block of tokens the pair's activations become two dense [tokens, d] matrices and the state adds
`Aᵀ·B` (Σab) and `1[A>0]ᵀ·1[B>0]` (co-firing counts) into [d_a, d_b] accumulators, a tile of a-rows at a
time. Nothing is capped: Pearson r, P(b|a) and Jaccard are exact for every pair (`error_bound` = 0.0).

Precision (`precision`; docs/design.md, Co-firing states):
- "float64": float64 inputs, products and accumulators: the reference (the CPU default, tests).
- "float32": float32 inputs, IEEE float32 products (no TF32) summed per block, float32 accumulator.
- "bf16x3" (the CUDA default): each float32 activation is split x = hi + lo into two bfloat16 numbers
  and Σab = Σ hi_a·hi_b + hi_a·lo_b + lo_a·hi_b runs on bfloat16 tensor cores with float32 accumulation
  (one GEMM over the three stacked along tokens). The split keeps 16 of float32's 24 mantissa bits, so each
  term is off by at most ≈ 2⁻¹⁶ relatively; float32 accumulates within and across blocks. With
  c = √(Σa²Σb² / Var_a·Var_b) (≈ 1 for sparse features), |Δr| ≲ 2⁻¹⁵·c, far below the 1e-4 the tests hold.
Counts are exact in every mode: int8 0/1 GEMMs into int32 on CUDA, float GEMMs of 0/1 (exact below
2²⁴ tokens per block) on the CPU, added into an int32 accumulator. Per-feature moments (Σa, Σa², fires)
are float64. Memory: d_a·d_b·(4 + 4) bytes in the GPU modes (16k × 16k: 2.1 GB; 65k × 65k: 34 GB), 12 in
"float64", plus a per-block workspace of about WORKSPACE_BYTES.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from atlas.match.candidates import Candidates
from atlas_ingest.cofiring.state import DENSE_LIMIT, PairState

PRECISIONS = ("float64", "float32", "bf16x3")
WORKSPACE_BYTES = 8 * 2**30
"""Per-block workspace on CUDA (token block, its split copies, one output tile); sets the block length."""
TILE_BYTES = 2**30
"""One output tile of a-rows × d_b (float32 products, float64 statistics in top-k)."""


def state_bytes(d_a: int, d_b: int, precision: str) -> int:
    """Bytes of the two [d_a, d_b] accumulators."""
    return d_a * d_b * ((8 if precision == "float64" else 4) + 4)


@contextlib.contextmanager
def _fp32_matmul(precision: str):
    """float32 matmuls in IEEE float32 ("highest") or with TF32 ("high") inside the block; restored after."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _dense(x, dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[t, d] activations (torch dense or sparse, numpy, scipy sparse) as a dense tensor on dev."""
    if sp.issparse(x):
        m = x.tocoo()
        idx = (torch.from_numpy(m.row.astype(np.int64)).to(dev), torch.from_numpy(m.col.astype(np.int64)).to(dev))
        return torch.zeros(m.shape, dtype=dtype, device=dev).index_put_(idx, torch.from_numpy(m.data).to(dev, dtype),
                                                                          accumulate=True)
    if isinstance(x, torch.Tensor):
        x = x.to_dense() if x.layout != torch.strided else x
        return x.detach().to(dev, dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype).to(dev)


@dataclass
class DenseCoFiring(PairState):
    """Streaming co-firing state of one SAE pair as full [d_a, d_b] accumulators (see the module docstring).
    Same interface as `atlas_ingest.cofiring.sparse.SparseCoFiring`: add, flush, finish, n, stats, lookup, dense, topk."""

    d_a: int
    d_b: int
    dev: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    precision: str | None = None
    """One of PRECISIONS; None: "bf16x3" on CUDA, "float64" elsewhere."""
    block_tokens: int | None = None
    """Tokens multiplied out at once; None: as many as WORKSPACE_BYTES allows (at most 16384)."""
    n: int = 0

    def __post_init__(self):
        self.dev = torch.device(self.dev)
        cuda = self.dev.type == "cuda"
        self.precision = self.precision or ("bf16x3" if cuda else "float64")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: one of {', '.join(PRECISIONS)}")
        self.dtype = torch.float64 if self.precision == "float64" else torch.float32
        if self.block_tokens is None:
            self.block_tokens = int(max(512, min(16384, WORKSPACE_BYTES // (16 * (self.d_a + self.d_b)))))
        z = {"device": self.dev}
        self.sab = torch.zeros((self.d_a, self.d_b), dtype=self.dtype, **z)
        self.cnt = torch.zeros((self.d_a, self.d_b), dtype=torch.int32, **z)
        self._s = [torch.zeros(d, dtype=torch.float64, **z) for d in (self.d_a, self.d_b)]
        self._q = [torch.zeros(d, dtype=torch.float64, **z) for d in (self.d_a, self.d_b)]
        self._f = [torch.zeros(d, dtype=torch.int64, **z) for d in (self.d_a, self.d_b)]
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_n = 0
        self.kernels = {"sab": None, "count": None}
        """Which GEMM each product ran on (the first that worked on this device), for the bench."""

    @property
    def error_bound(self) -> float:
        """Nothing is dropped: every statistic is exact (up to the precision above)."""
        return 0.0

    # per-feature moments as float64 numpy arrays, the names SparseCoFiring uses
    s_a = property(lambda self: self._s[0].cpu().numpy())
    s_b = property(lambda self: self._s[1].cpu().numpy())
    q_a = property(lambda self: self._q[0].cpu().numpy())
    q_b = property(lambda self: self._q[1].cpu().numpy())
    f_a = property(lambda self: self._f[0].cpu().numpy())
    f_b = property(lambda self: self._f[1].cpu().numpy())

    # -- accumulation --------------------------------------------------------------------------
    def add(self, a, b) -> None:
        """One batch: row t of `a` [t, d_a] and of `b` [t, d_b] is the same token."""
        A, B = _dense(a, self.dev, self.dtype), _dense(b, self.dev, self.dtype)
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[0] or A.shape[1] != self.d_a or B.shape[1] != self.d_b:
            raise ValueError(f"batch shapes {tuple(A.shape)} and {tuple(B.shape)} do not fit a pair of widths "
                             f"({self.d_a}, {self.d_b})")
        if bool((A < 0).any()) or bool((B < 0).any()):
            raise ValueError("activations must be non-negative (SAE feature activations)")
        self.n += A.shape[0]
        for i, m in enumerate((A, B)):
            self._s[i] += m.sum(0, dtype=torch.float64)
            self._q[i] += (m * m).sum(0, dtype=torch.float64)
            self._f[i] += (m > 0).sum(0)
        self._pending.append((A, B))
        self._pending_n += A.shape[0]
        if self._pending_n >= self.block_tokens:
            self.flush()

    def flush(self) -> None:
        """Multiply the pending tokens out into the accumulators, one tile of a-rows at a time."""
        if not self._pending:
            return
        A = torch.cat([p[0] for p in self._pending]) if len(self._pending) > 1 else self._pending[0][0]
        B = torch.cat([p[1] for p in self._pending]) if len(self._pending) > 1 else self._pending[0][1]
        self._pending, self._pending_n = [], 0
        pad = -A.shape[0] % 8  # int8 GEMMs want the token count a multiple of 8; zero tokens add nothing
        if pad:
            A, B = (torch.cat([m, m.new_zeros((pad, m.shape[1]))]) for m in (A, B))
        flag = torch.int8 if self.dev.type == "cuda" else self.dtype
        fa, fb = ((m > 0).T.contiguous().to(flag) for m in (A, B))  # [d, t] 0/1: the GEMMs' operands are row-major
        xa, xb = self._operands(A, B)
        del A, B
        rows = max(17, TILE_BYTES // (4 * self.d_b))
        for r0 in range(0, self.d_a, rows):
            r1 = min(r0 + rows, self.d_a)
            self.sab[r0:r1] += self._mm_sab(xa[r0:r1], xb)
            self.cnt[r0:r1] += self._mm_count(fa[r0:r1], fb)

    def _operands(self, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-major [d, tokens'] operands of Σab: the values, or for bf16x3 [hi, hi, lo] against [hi, lo, hi]."""
        if self.precision != "bf16x3":
            return A.T.contiguous(), B.T.contiguous()
        out = []
        for m, order in ((A, (0, 0, 1)), (B, (0, 1, 0))):
            hi = m.to(torch.bfloat16)
            lo = (m - hi.float()).to(torch.bfloat16)
            parts = (hi, lo)
            x = torch.cat([parts[o] for o in order]).T.contiguous()
            out.append(x if self.dev.type == "cuda" else x.float())  # bf16 values are exact in float32
        return out[0], out[1]

    def _mm_sab(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [r, t] · yᵀ [t, d_b] in this precision, float32 (float64) out."""
        if self.precision == "float64":
            self.kernels["sab"] = "float64"
            return x @ y.T
        if self.precision == "float32" or x.dtype == torch.float32:
            with _fp32_matmul("highest"):  # IEEE float32 (bf16x3 on the CPU: its parts, exact in float32)
                self.kernels["sab"] = f"float32 ({self.precision})"
                return x @ y.T
        if self.kernels["sab"] != "tf32 of bf16 parts":
            try:  # bfloat16 tensor cores with float32 output (torch ≥ 2.8 on CUDA)
                out = torch.mm(x, y.T, out_dtype=torch.float32)
                self.kernels["sab"] = "bf16 tensor cores, float32 out"
                return out
            except (RuntimeError, TypeError):
                self.kernels["sab"] = "tf32 of bf16 parts"
        with _fp32_matmul("high"):  # the same exact products on TF32 tensor cores (bf16 values fit TF32)
            return x.float() @ y.float().T

    def _mm_count(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Co-firing counts of 0/1 x [r, t] and y [d_b, t] (int8 on CUDA): exact integers, int32 out."""
        if self.dev.type == "cuda" and self.kernels["count"] != "bf16" and x.shape[0] > 16 and y.shape[0] % 8 == 0:
            try:
                out = torch._int_mm(x, y.T)  # int8 tensor cores, int32 out (row-major x, column-major yᵀ)
                self.kernels["count"] = "int8"
                return out
            except RuntimeError:
                self.kernels["count"] = "bf16"
        if self.dev.type == "cuda":
            try:  # 0/1 in bfloat16 are exact; float32 sums of at most 2^24 ones are exact
                return torch.mm(x.to(torch.bfloat16), y.to(torch.bfloat16).T, out_dtype=torch.float32).to(torch.int32)
            except (RuntimeError, TypeError):
                pass
        self.kernels["count"] = self.kernels["count"] or str(self.dtype).removeprefix("torch.")
        return (x.to(self.dtype) @ y.to(self.dtype).T).to(torch.int32)

    # -- statistics ------------------------------------------------------------------------------
    def _inv_sd(self, i: int) -> torch.Tensor:
        """1/√(var·n) per feature, 0 for features that never vary (dead): their r is 0 with everything."""
        n = max(self.n, 1)
        v = torch.clamp(self._q[i] - self._s[i] * self._s[i] / n, min=0.0)
        return torch.where(v > 0, 1.0 / torch.sqrt(torch.where(v > 0, v, 1.0)), 0.0)

    def _r(self, rows: slice | torch.Tensor, cols: slice | torch.Tensor, sab: torch.Tensor | None = None) -> torch.Tensor:
        """Pearson r of rows × cols (a block when both are slices, pairs when both are index tensors)."""
        self.flush()
        n = max(self.n, 1)
        s_a, s_b, ia, ib = self._s[0][rows], self._s[1][cols], self._inv_sd(0)[rows], self._inv_sd(1)[cols]
        if sab is None:
            sab = self.sab[rows, cols].double()
        if isinstance(rows, slice):
            s_a, ia = s_a[:, None], ia[:, None]
        return (sab - s_a * s_b / n) * ia * ib

    def lookup(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        """(Σab, count) of each pair (rows[e], cols[e]); 0 for pairs that never co-fire."""
        self.flush()
        r, c = (torch.as_tensor(np.asarray(x, np.int64), device=self.dev) for x in (rows, cols))
        return self.sab[r, c].double().cpu().numpy(), self.cnt[r, c].double().cpu().numpy()

    def _pair_r(self, rows: np.ndarray, cols: np.ndarray, sab: np.ndarray) -> np.ndarray:
        return self._r(*(torch.as_tensor(x, device=self.dev) for x in (rows, cols, sab))).cpu().numpy()

    def dense(self) -> dict[str, np.ndarray]:
        """The same statistics for every pair as [d_a, d_b] host matrices; only for small widths."""
        self._check_dense()
        all_ = slice(None)
        cnt = self.cnt.double()
        fa, fb = self._f[0].double()[:, None], self._f[1].double()[None, :]
        out = {"pearson": self._r(all_, all_), "cofire": cnt, "p_b_given_a": cnt / fa.clamp(min=1),
               "jaccard": cnt / (fa + fb - cnt).clamp(min=1)}
        return {k: v.cpu().numpy() for k, v in out.items()}

    def topk(self, k: int) -> Candidates:
        """Each feature's k highest-r partners in both directions over all pairs, on the device in tiles of
        rows (ties by lower column, as a stable sort would break them); only [d, k] comes to the host."""
        self.flush()
        a2b = self._topk_dir(k, self.d_a, self.d_b, lambda r0, r1: self._r(slice(r0, r1), slice(None)))
        b2a = self._topk_dir(k, self.d_b, self.d_a, lambda c0, c1: self._r(slice(None), slice(c0, c1)).T)
        return Candidates(a2b[0], a2b[1], b2a[0], b2a[1])

    def _tile_bytes(self) -> int:
        """Bytes of one float64 tile of r in top-k (a few temporaries of its size live at once)."""
        return TILE_BYTES

    def _topk_dir(self, k: int, n_rows: int, n_cols: int, block) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, n_cols)
        score, index = np.empty((n_rows, k)), np.empty((n_rows, k), np.int64)
        step = max(1, self._tile_bytes() // (8 * max(n_cols, 1)))
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            v, i = _topk_rows(block(r0, r1), k)
            score[r0:r1], index[r0:r1] = v.cpu().numpy(), i.cpu().numpy()
        return score, index


def _topk_rows(r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (score, column) of each row of r, equal scores ordered by column. torch.topk breaks ties
    in no stated order, so rows whose k-th and (k+1)-th scores tie (dead features: a row of zeros) are
    sorted stably instead, and each row's k are put in (−score, column) order."""
    if k >= r.shape[1]:
        return torch.sort(r, dim=1, descending=True, stable=True)
    v, i = torch.topk(r, k + 1, dim=1)
    v, i = v.contiguous(), i.contiguous()
    tie = torch.nonzero(v[:, k - 1] == v[:, k]).flatten()
    if len(tie):
        sv, si = torch.sort(r[tie], dim=1, descending=True, stable=True)
        v[tie, :k], i[tie, :k] = sv[:, :k], si[:, :k]
    v, i = v[:, :k], i[:, :k]
    o = torch.argsort(i, dim=1)
    v, i = torch.gather(v, 1, o), torch.gather(i, 1, o)
    o = torch.argsort(v, dim=1, descending=True, stable=True)
    return torch.gather(v, 1, o), torch.gather(i, 1, o)


def fits(d_a: int, d_b: int, dev: torch.device | None, precision: str | None = None) -> bool:
    """Whether a dense state of this pair is the default on dev: on CUDA when its accumulators and a block
    workspace fit 90% of the memory free now (others' states already count); never on the CPU, where the
    sparse state is faster at SAE sparsity and its scipy/numba sums do not depend on the thread count."""
    if dev is None or torch.device(dev).type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(dev)
    free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)  # torch's cache is free to us
    return state_bytes(d_a, d_b, precision or "bf16x3") + WORKSPACE_BYTES + 2 * TILE_BYTES <= 0.9 * free
