"""Feature activations of an SAE for inputs x [T, d_in], in torch: each architecture's encoder
(`atlas.sae.ARCHS`) applied to the pre-activation, and the reconstruction."""

from __future__ import annotations

import numpy as np
import torch

from .sae import ARCHS, SAERecord, SAEWeights


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


@torch.no_grad()
def encode(w: SAEWeights, x: torch.Tensor, arch: str, k: int | None = None,
           apply_b_dec_to_input: bool = True) -> torch.Tensor:
    """[T, d_sae] activations of the SAE's architecture.

    Transcoders never subtract b_dec: it lives in their output space (callers pass False for them)."""
    W_enc, b_enc, b_dec = _t(w.W_enc), _t(w.b_enc), _t(w.b_dec)
    x = x.float()
    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    return ARCHS[arch].encoder(w, pre, k)


def encode_record(rec: SAERecord, x: torch.Tensor) -> torch.Tensor:
    """[T, d_sae] activations of an SAE as its reader returns it: whether it subtracts b_dec from its input is
    the reader's `apply_b_dec_to_input` (SAELens's flag; Gemma Scope and transcoders never do)."""
    m = rec.meta
    return encode(rec.weights, x, m.arch, m.k, m.extra.get("apply_b_dec_to_input", m.kind == "sae"))


@torch.no_grad()
def decode(w: SAEWeights, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction (transcoders: the output-site prediction, plus x @ W_skip.T where they skip)."""
    out = acts @ _t(w.W_dec) + _t(w.b_dec)
    if x is not None and "W_skip" in w.extra:
        out = out + x.float() @ _t(w.extra["W_skip"]).T
    return out
