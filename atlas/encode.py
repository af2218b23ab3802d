"""Feature activations of an SAE for inputs x [T, d_in]: each architecture's encoder, in torch.

ENCODERS is keyed by the names of atlas.sae.ARCHS; a test checks that both registries list the same
architectures, so adding one means adding its tensors there and its encoder here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .sae import ARCHS, SAEWeights


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def _relu(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    return torch.relu(pre)


def _jumprelu(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    return pre * (pre > _t(w.threshold))


def _topk(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    acts = torch.relu(pre)
    vals, idx = acts.topk(k, dim=1)
    return torch.zeros_like(acts).scatter_(1, idx, vals)


def _batchtopk(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    """At inference batch-top-k SAEs use the threshold learnt in training where they have one
    (dictionary_learning), else the per-token top-k."""
    if w.threshold is not None:
        acts = torch.relu(pre)
        return acts * (acts > _t(w.threshold))
    return _topk(w, x, pre, k)


def _gated(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    """Gated SAE (Rajamanoharan et al. 2024): the gate (W_enc, b_enc = b_gate) decides which features
    fire, the magnitude path (W_enc · exp(r_mag), b_mag) how strongly."""
    gate = pre > 0
    mag = (pre - _t(w.b_enc)) * torch.exp(_t(w.extra["r_mag"])) + _t(w.extra["b_mag"])
    return gate * torch.relu(mag)


def _groupmax(w: SAEWeights, x: torch.Tensor, pre: torch.Tensor, k: int | None) -> torch.Tensor:
    """sparsify's groupmax: latents split into k equal groups, the largest of each group is kept."""
    acts = torch.relu(pre)
    groups = acts.unflatten(-1, (k, -1))
    vals, idx = groups.max(dim=-1, keepdim=True)
    return torch.zeros_like(groups).scatter_(-1, idx, vals).flatten(-2)


ENCODERS: dict[str, Callable] = {"standard": _relu, "jumprelu": _jumprelu, "topk": _topk,
                                 "batchtopk": _batchtopk, "gated": _gated, "groupmax": _groupmax}
assert set(ENCODERS) == set(ARCHS), "atlas.sae.ARCHS and atlas.encode.ENCODERS must list the same architectures"


@torch.no_grad()
def encode(w: SAEWeights, x: torch.Tensor, arch: str, k: int | None = None,
           apply_b_dec_to_input: bool = True) -> torch.Tensor:
    """[T, d_sae] activations of the SAE's architecture (see ENCODERS).

    Transcoders never subtract b_dec: it lives in their output space (callers pass False for them)."""
    W_enc, b_enc, b_dec = _t(w.W_enc), _t(w.b_enc), _t(w.b_dec)
    x = x.float()
    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    return ENCODERS[arch](w, x, pre, k)


@torch.no_grad()
def decode(w: SAEWeights, acts: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
    """Reconstruction (transcoders: the output-site prediction, plus x @ W_skip.T where they skip)."""
    out = acts @ _t(w.W_dec) + _t(w.b_dec)
    if x is not None and "W_skip" in w.extra:
        out = out + x.float() @ _t(w.extra["W_skip"]).T
    return out
