"""How alike two SAEs' dictionaries are: PW-MCC and MMCS, each beside a random baseline of its own definition
(docs/design.md, Consistency).

PW-MCC (Song et al. 2025, their `MCC`): unit decoder rows, ONE one-to-one assignment over all features
maximising the sum of signed cosines (scipy's `linear_sum_assignment` on cost 1 − cos), PW-MCC = the mean
matched cosine. For n_a ≠ n_b the rectangular assignment pairs min(n_a, n_b) features and the mean is over
those pairs. Exact (dense) where n_a·n_b ≤ DENSE_MAX; above, the assignment runs over the candidate graph
(each feature's top-k cosines, both ways) and rows it leaves unmatched are then assigned among themselves
by a dense assignment (or enter with cosine 0 where even that would not fit). The result is the mean of a
valid one-to-one assignment, so never above the exact value: measured 2.4e-4 below it for synthetic
siblings at 4k and 16k features (`python -m bench pwmcc`, README).

MMCS (Sharkey et al. 2022): the mean over both SAEs of each feature's max |cosine| in the other; always at
least PW-MCC's matched cosine, since a feature's best partner need not be free.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import betainc

from .assign import DENSE_MAX, assign_sparse
from .candidates import edges as candidate_edges
from .candidates import full_scores, topk_both


def pw_mcc_dense(cos: np.ndarray) -> float:
    """Exact PW-MCC from the full [n_a, n_b] cosine matrix."""
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


def pw_mcc_sparse(fa: np.ndarray, fb: np.ndarray, cos: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """PW-MCC over candidate edges (fa[e], fb[e], cos[e]) of decoders a [n_a, d] and b [n_b, d].

    The sparse solver maximises Σ cos over matchings of the edges with cos > 0 (leaving a row unmatched is
    worth 0, so a negative edge is never forced); the rows and columns it leaves free are then assigned
    densely among themselves (they are few: 11 of 16,384 for synthetic siblings), or, where that residual
    would pass DENSE_MAX, enter with cosine 0 (the mean cosine of two random directions)."""
    n_a, n_b = len(a), len(b)
    ra, rb = assign_sparse(fa, fb, cos.astype(np.float64), n_a, n_b)
    keys = fa.astype(np.int64) * n_b + fb
    order = np.argsort(keys)
    total = float(cos[order[np.searchsorted(keys[order], ra.astype(np.int64) * n_b + rb)]].astype(np.float64).sum())
    free_a = np.setdiff1d(np.arange(n_a), ra)
    free_b = np.setdiff1d(np.arange(n_b), rb)
    if len(free_a) and len(free_b) and len(free_a) * len(free_b) <= DENSE_MAX:
        total += pw_mcc_dense(full_scores(a[free_a], b[free_b]).astype(np.float64)) * min(len(free_a), len(free_b))
    return total / min(n_a, n_b)


def pw_mcc(a: np.ndarray, b: np.ndarray, k: int = 16, edges=None, full: np.ndarray | None = None) -> float:
    """PW-MCC of decoders a [n_a, d] and b [n_b, d]: dense where n_a·n_b ≤ DENSE_MAX (from `full`, the
    cosine matrix, when the caller has it), else sparse over `edges` (fa, fb, cos), or over the top-k
    candidates both ways when none are given."""
    if len(a) * len(b) <= DENSE_MAX:
        return pw_mcc_dense(full if full is not None else full_scores(a, b).astype(np.float64))
    if edges is None:
        edges = candidate_edges(topk_both(a, b, k))
    return pw_mcc_sparse(*edges, a, b)


@functools.lru_cache(maxsize=64)
def pw_mcc_random(n_a: int, n_b: int, d: int, k: int = 16) -> float:
    """PW-MCC of two independent random unit dictionaries of these shapes, by the same code path (dense or
    sparse). Simulated once per shape and process (one draw, seeded by the shape: its spread between draws
    is below 1e-3 at these sizes, tests/test_consistency.py) and cached."""
    rng = np.random.default_rng([n_a, n_b, d])
    a = rng.standard_normal((n_a, d), dtype=np.float32)
    b = rng.standard_normal((n_b, d), dtype=np.float32)
    return pw_mcc(a, b, k)


def mmcs(a_absmax: np.ndarray, b_absmax: np.ndarray) -> float:
    """MMCS from each feature's best |cosine| in the other SAE (a_absmax [n_a], b_absmax [n_b])."""
    return float((a_absmax.mean() + b_absmax.mean()) / 2)


@functools.lru_cache(maxsize=256)
def mmcs_random(n_a: int, n_b: int, d: int) -> float:
    """MMCS expected of two SAEs with independent random unit decoders of these widths in d dims (closed form).

    For random unit x, y in R^d, cos² ~ Beta(1/2, (d−1)/2); a row's best |cos| over n others has
    E = ∫₀¹ 1 − F(t)ⁿ dt with F(t) = I_{t²}(1/2, (d−1)/2), integrated on a fine grid."""
    t = np.linspace(0.0, 1.0, 20_001)
    log_f = np.log(np.maximum(betainc(0.5, (d - 1) / 2, t * t), 1e-300))

    def best(n: int) -> float:
        return float(np.trapezoid(1 - np.exp(n * log_f), t))

    return (best(n_b) + best(n_a)) / 2


def consistency(a: np.ndarray, b: np.ndarray, a_absmax: np.ndarray, b_absmax: np.ndarray, k: int,
                edges=None, full: np.ndarray | None = None) -> dict:
    """The pair_stats consistency columns of decoders a and b: pw_mcc, mmcs and their random baselines."""
    (n_a, d), n_b = a.shape, len(b)
    return dict(pw_mcc=pw_mcc(a, b, k, edges, full), pw_mcc_random=pw_mcc_random(n_a, n_b, d, k),
                mmcs=mmcs(a_absmax, b_absmax), mmcs_random=mmcs_random(n_a, n_b, d))
