"""Pair statistics of one assignment: matched fraction, score summary, MSE after permutation, histogram."""

from __future__ import annotations

import numpy as np

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
