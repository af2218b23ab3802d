"""Co-firing statistics of SAE pairs over the same tokens (docs/design.md, Co-firing states): the sparse
capped state (`sparse`, its compiled CPU loops in `kernels`), the dense exact one on a GPU (`dense`) and on
the CPU (`exact`), what all three share (`state`), and `new_state`, which picks one for a pair, a device and a
memory budget."""

from __future__ import annotations

import torch

from atlas_ingest.cofiring import exact
from atlas_ingest.cofiring.dense import DenseCoFiring, fits
from atlas_ingest.cofiring.exact import ExactCoFiring, memory_budget
from atlas_ingest.cofiring.sparse import MAX_PAIRS, PAIR_BYTES, SparseCoFiring, accumulate, device

__all__ = ["MAX_PAIRS", "DenseCoFiring", "ExactCoFiring", "SparseCoFiring", "accumulate", "memory_budget", "new_state"]


def new_state(d_a: int, d_b: int, dev: torch.device | None = None, dense: bool | None = None,
              max_pairs: int = MAX_PAIRS, memory: int | None = None) -> SparseCoFiring | DenseCoFiring:
    """The co-firing state of a d_a × d_b pair on dev (default: CUDA when torch sees it, else the CPU).

    On CUDA: dense and exact (`DenseCoFiring`) when its accumulators fit the device's free memory. On the CPU:
    exact (`ExactCoFiring`) when its accumulators fit what is left of the memory budget (`memory` bytes, default
    `memory_budget()`, less the states this process still holds). Otherwise the sparse capped `SparseCoFiring`.
    `dense` forces either (True: exact, False: capped)."""
    dev = dev if dev is not None else device()
    cuda = dev is not None and torch.device(dev).type == "cuda"
    if dense is None:
        dense = fits(d_a, d_b, dev) if cuda else exact.fits(d_a, d_b, memory)
    if dense and cuda:
        return DenseCoFiring(d_a, d_b, dev=dev)
    if dense:
        return exact.hold(ExactCoFiring(d_a, d_b), exact.exact_bytes(d_a, d_b))
    return exact.hold(SparseCoFiring(d_a, d_b, max_pairs=max_pairs, dev=dev), max_pairs * PAIR_BYTES)
