"""SAE Match's checks of a weight-based assignment on real activations (matching score, explained variance)."""

from __future__ import annotations

import numpy as np
import torch

from atlas.encode import decode
from atlas.sae import SAERecord
from atlas_ingest.cofiring.sparse import SparseCoFiring


class Quality:
    """SAE Match's checks of a weight-based assignment fa[i] → fb[i] on real activations, streamed:
    matching score = mean P(b_j fires | a_i fires) over assigned pairs whose a fires at all, and the
    explained variance of encode_a(x_a) → permute → decode_b against x_b."""

    def __init__(self, b: SAERecord, fa: np.ndarray, fb: np.ndarray):
        self.b, self.fa, self.fb = b, torch.from_numpy(fa), torch.from_numpy(fb)
        self.sse = self.sxx = 0.0
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

    def result(self, state: SparseCoFiring) -> dict:
        fa, fb = self.fa.numpy(), self.fb.numpy()
        fired = state.f_a[fa] > 0
        _, cnt = state.lookup(fa, fb)
        matching = float((cnt[fired] / state.f_a[fa][fired]).mean()) if fired.any() else None
        sst = self.sxx - float((self.sum_x ** 2).sum()) / max(self.n, 1) if self.sum_x is not None else 0.0
        return {"matching_score": matching, "explained_variance": 1 - self.sse / sst if sst > 0 else None}
