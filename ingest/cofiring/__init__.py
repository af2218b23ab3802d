"""Co-firing statistics of SAE pairs over the same tokens (docs/design.md, Co-firing states): the sparse
capped state (`sparse`, its compiled CPU loops in `kernels`), the dense exact one (`dense`), and `new_state`,
which picks one for a pair and a device."""

from __future__ import annotations

import torch

from ingest.cofiring.dense import DenseCoFiring, fits
from ingest.cofiring.sparse import MAX_PAIRS, CoFiring, accumulate, device

__all__ = ["MAX_PAIRS", "CoFiring", "DenseCoFiring", "accumulate", "new_state"]


def new_state(d_a: int, d_b: int, dev: torch.device | None = None, dense: bool | None = None,
              max_pairs: int = MAX_PAIRS) -> CoFiring | DenseCoFiring:
    """The co-firing state of a d_a × d_b pair on dev (default: CUDA when torch sees it, else the CPU):
    dense and exact (`DenseCoFiring`) when its accumulators fit the device's free memory, else the sparse
    capped `CoFiring`, which is also the CPU's default; `dense` forces either."""
    dev = dev if dev is not None else device()
    if dense is None:
        dense = fits(d_a, d_b, dev)
    if dense:
        return DenseCoFiring(d_a, d_b, dev=dev if dev is not None else torch.device("cpu"))
    return CoFiring(d_a, d_b, max_pairs=max_pairs, dev=dev)
