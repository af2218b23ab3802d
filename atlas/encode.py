"""Feature activations of an SAE for inputs x [T, d_in]: each architecture's encoder, in torch."""

from __future__ import annotations

import numpy as np
import torch

from .sae import SAEWeights


@torch.no_grad()
def encode(w: SAEWeights, x: torch.Tensor, arch: str, k: int | None = None,
           apply_b_dec_to_input: bool = True) -> torch.Tensor:
    """[T, d_sae] activations: ReLU (standard), JumpReLU (threshold), top-k / batch-top-k (k)."""
    W_enc, b_enc, b_dec = (torch.from_numpy(np.asarray(t, dtype=np.float32)) for t in (w.W_enc, w.b_enc, w.b_dec))
    x = x.float()
    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    if arch == "jumprelu":
        return pre * (pre > torch.from_numpy(w.threshold))
    acts = torch.relu(pre)
    if arch in ("topk", "batchtopk"):
        vals, idx = acts.topk(k, dim=1)
        acts = torch.zeros_like(acts).scatter_(1, idx, vals)
    return acts


@torch.no_grad()
def decode(w: SAEWeights, acts: torch.Tensor) -> torch.Tensor:
    return acts @ torch.from_numpy(w.W_dec) + torch.from_numpy(w.b_dec)
