"""Pair statistics of one assignment: matched fraction, score summary, MSE after permutation, histogram."""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import betainc

HIST_BINS = 20


def pair_stats(score: np.ndarray, matched: np.ndarray, fa: np.ndarray, fb: np.ndarray,
               mse: np.ndarray, n_a: int, n_b: int, tau: float, distance: bool) -> dict:
    """Summary of the assigned pairs (score, matched flag, feature ids, per-pair decoder MSE)."""
    n_assigned = len(score)
    lo, hi = (0.0, float(score.max()) if n_assigned else 1.0) if distance else (0.0, 1.0)
    hist = np.histogram(np.clip(score, lo, hi), bins=HIST_BINS, range=(lo, hi or 1.0))[0]
    n_matched = int(matched.sum())
    return dict(
        n_a=n_a, n_b=n_b, n_assigned=n_assigned, n_matched=n_matched,
        matched_frac=n_matched / n_a if n_a else 0.0,
        mean_score=float(score.mean()) if n_assigned else None,
        median_score=float(np.median(score)) if n_assigned else None,
        mse_after_perm=float(mse.mean()) if n_assigned else None,
        identity_frac=float((fa == fb).mean()) if n_assigned else None,
        tau=tau, score_hist=hist.astype(float).tolist(), hist_lo=lo, hist_hi=hi,
    )


@functools.lru_cache(maxsize=256)
def pw_mcc_random(n_a: int, n_b: int, d: int) -> float:
    """PW-MCC expected of two SAEs with independent random unit decoders of these widths in d dims.

    For random unit x, y in R^d, cos² ~ Beta(1/2, (d−1)/2); a row's best |cos| over n others has
    E = ∫₀¹ 1 − F(t)ⁿ dt with F(t) = I_{t²}(1/2, (d−1)/2), integrated on a fine grid."""
    t = np.linspace(0.0, 1.0, 20_001)
    log_f = np.log(np.maximum(betainc(0.5, (d - 1) / 2, t * t), 1e-300))

    def best(n: int) -> float:
        return float(np.trapezoid(1 - np.exp(n * log_f), t))

    return (best(n_b) + best(n_a)) / 2
