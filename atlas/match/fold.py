"""Vectors each method compares, including JumpReLU threshold folding (Mechanistic Permutability).

Folding: W_enc' = W_enc diag(1/θ), b_enc' = b_enc/θ, W_dec' = diag(θ) W_dec, θ' = 1 leaves the SAE's
output unchanged, so decoder row i becomes θ_i · W_dec[i]: a feature that only fires at large
magnitudes is compared at that magnitude. decoder_mse is then
    mse(i, j) = ‖θ_a,i W_dec(A)[i] − θ_b,j W_dec(B)[j]‖² / d_in
and the assignment minimises its sum. SAEs without thresholds are compared on raw decoder rows.
"""

from __future__ import annotations

import numpy as np

from ..sae import SAEWeights

from .methods import WEIGHT_METHODS as METHODS  # the registry's weight methods
from .methods import is_distance  # noqa: F401  (re-exported: pair.py imports it from here)


def folded_decoder(w: SAEWeights) -> np.ndarray:
    """[d_sae, d_in]: row i scaled by threshold i (unchanged without thresholds)."""
    if w.threshold is None:
        return w.W_dec
    return w.W_dec * w.threshold[:, None]


def method_vectors(w: SAEWeights, method: str) -> np.ndarray:
    """The rows that `method` compares: [d_sae, d_in]."""
    if method == "decoder_cos":
        return w.W_dec
    if method == "decoder_mse":
        return folded_decoder(w)
    if method == "encoder_cos":
        return np.ascontiguousarray(w.W_enc.T)
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")

