"""Exact co-firing state on the CPU, chosen by a memory budget (docs/design.md, Co-firing states).

`ExactCoFiring` holds what `DenseCoFiring` holds, Σab as float64 and the co-firing counts as int32 for every
(a, b) cell (12 bytes a cell: 3.2 GB at 16k × 16k), but fills them from sparse batches: per chunk of tokens one
compiled pass (kernels.scatter_products) adds a·b and 1 into the cells of the pairs that co-fire, so it does a
sparse product's multiply-adds with no symbolic pass, no merge and no cap. Its statistics, lookups and top-k
are DenseCoFiring's; its top-k is one compiled pass over the cells (kernels.topk_dense).

At SAE widths most pairs co-fire within a long corpus (91% of 16k × 16k within 1M synthetic tokens), so the
exact dense state is also the smallest exact one: a sparse exact state would pay an index per pair on top.
`new_state` gives it when it fits the memory budget (`memory_budget`: ATLAS_COFIRING_MEMORY, default 4 GiB,
shared by the states one process holds at once), else the capped sparse state.
"""

from __future__ import annotations

import mmap
import os
import re
import weakref
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from atlas_ingest.cofiring import kernels
from atlas_ingest.cofiring.dense import DenseCoFiring
from atlas.match.candidates import Candidates
from atlas_ingest.cofiring.sparse import CHUNK_NNZ, BatchQueue

MEMORY_ENV = "ATLAS_COFIRING_MEMORY"
MEMORY_BYTES = 4 * 2**30
"""Default host memory for the co-firing states of one process (exact accumulators and capped caps together)."""
CELL_BYTES = 12
"""Σab float64 + count int32 per (a, b) cell."""
WORKSPACE_BYTES = 2**29
"""Pending token chunk and its transposed copy, at CHUNK_NNZ non-zeros (about 0.3 GB), with some margin."""

_HELD: weakref.WeakValueDictionary[int, object] = weakref.WeakValueDictionary()


def exact_bytes(d_a: int, d_b: int) -> int:
    """Host bytes of an exact state of a d_a × d_b pair: its accumulators and its chunk workspace."""
    return d_a * d_b * CELL_BYTES + WORKSPACE_BYTES


def memory_budget() -> int:
    """Bytes the co-firing states of this process may hold together: ATLAS_COFIRING_MEMORY (bytes, or with a
    K/M/G suffix, e.g. "8G"), else MEMORY_BYTES."""
    text = os.environ.get(MEMORY_ENV, "").strip()
    if not text:
        return MEMORY_BYTES
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)i?B?", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"{MEMORY_ENV}={text!r}: give bytes, or a number with K, M or G (e.g. 8G)")
    return int(float(m.group(1)) * 1024 ** " KMG".index(m.group(2).upper() or " "))


def held_bytes() -> int:
    """Bytes the live states made through `hold` reserve now."""
    return sum(getattr(s, "reserved_bytes", 0) for s in list(_HELD.values()))


def hold(state, nbytes: int):
    """Count `state` against the budget while it lives."""
    state.reserved_bytes = nbytes
    _HELD[id(state)] = state
    return state


def fits(d_a: int, d_b: int, budget: int | None = None) -> bool:
    """Whether an exact state of this pair fits what is left of the budget (states still alive count)."""
    return exact_bytes(d_a, d_b) <= (memory_budget() if budget is None else budget) - held_bytes()


def _zeros(shape: tuple[int, int], dtype) -> np.ndarray:
    """Zeroed host memory in transparent huge pages where the kernel allows them (madvise): the first touch
    of 3 GB in 4 KB pages costs seconds of page faults, in 2 MB pages a fraction of that."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes < 2**21 or not hasattr(mmap, "MADV_HUGEPAGE"):
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(buf, dtype).reshape(shape)


@dataclass
class ExactCoFiring(BatchQueue, DenseCoFiring):
    """Dense exact co-firing state of one SAE pair on the CPU, filled from sparse batches (module docstring).
    Same interface as the other states: add, flush, finish, n, stats, lookup, dense, topk, error_bound = 0.0."""

    chunk_nnz: int = CHUNK_NNZ
    """Multiply pending batches out once they hold this many non-zeros (a and b together)."""

    def __post_init__(self):
        self.dev, self.precision, self.dtype = torch.device("cpu"), "float64", torch.float64
        self.block_tokens = None
        self._sab, self._cnt = _zeros((self.d_a, self.d_b), np.float64), _zeros((self.d_a, self.d_b), np.int32)
        self.sab, self.cnt = torch.from_numpy(self._sab), torch.from_numpy(self._cnt)
        self._s = [torch.zeros(d, dtype=torch.float64) for d in (self.d_a, self.d_b)]
        self._q = [torch.zeros(d, dtype=torch.float64) for d in (self.d_a, self.d_b)]
        self._f = [torch.zeros(d, dtype=torch.int64) for d in (self.d_a, self.d_b)]
        self._pending: list[tuple[sp.csr_matrix, sp.csr_matrix]] = []
        self._nnz = 0
        self.kernels = {"sab": "scatter float64", "count": "scatter int32"}

    def _sums(self):  # numpy views of the torch sums: BatchQueue.add adds into them in place
        return [tuple(t[i].numpy() for t in (self._s, self._q, self._f)) for i in (0, 1)]

    def flush(self) -> None:
        """Scatter the pending tokens' products into the accumulators (kernels.scatter_products)."""
        if not self._pending:
            return
        At, B = self._take_pending()
        kernels.scatter_products(At, B, self._sab, self._cnt)

    def topk(self, k: int) -> Candidates:
        """Each feature's k highest-r partners in both directions over all pairs, in one compiled pass over the
        cells (kernels.topk_dense; ties by lower index, as the other states break them)."""
        self.flush()
        inv_a, inv_b = (self._inv_sd(i).numpy() for i in (0, 1))
        a2b, b2a = kernels.topk_dense(self._sab, self.s_a, self.s_b, inv_a, inv_b, self.n, k)
        return Candidates(a2b[0], a2b[1], b2a[0], b2a[1])
