"""How alike two SAEs' dictionaries are: PW-MCC and MMCS, each beside a random baseline of its own definition
(docs/design.md, Consistency).

PW-MCC (Song et al. 2025, their `MCC`): unit decoder rows, ONE one-to-one assignment over all features
maximising the sum of signed cosines (scipy's `linear_sum_assignment` on cost 1 − cos, as their code), PW-MCC
= the mean matched cosine. For n_a ≠ n_b the rectangular assignment pairs min(n_a, n_b) features and the
mean is over those pairs. Exact (dense) where n_a·n_b ≤ DENSE_MAX; above, the assignment runs over the
candidate graph (each feature's top-k cosines, both ways; pw_mcc_sparse says how). That is a valid
one-to-one assignment, so never above the exact value; the stated bound is 1e-4 below it, and
`python -m bench pwmcc` measured at most 2.1e-5 at 4k and 16k features on synthetic seed siblings, dataset
siblings and random pairs (README's benchmark table), in 3-4 s at 16k where the dense solver takes 1-2 min.

MMCS (Sharkey et al. 2022): the mean over both SAEs of each feature's max |cosine| in the other. For equal
widths it is at least PW-MCC, since a feature's best partner need not be free.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.special import betainc

from ..index import unit_rows
from ..store.schema import RANDOM_BASELINE_KEY
from .assign import DENSE_MAX
from .candidates import edges as candidate_edges
from .candidates import full_scores, topk_both


def pw_mcc_dense(cos: np.ndarray) -> float:
    """Exact PW-MCC from the full [n_a, n_b] cosine matrix."""
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return float(cos[rows, cols].mean())


WEAK = 0.3  # matched cosine below which a pair is random-level (the assignment floor of MatchParams)


def _full_matching(fa, fb, cos, n_a: int, n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max-Σcos matching of min(n_a, n_b) pairs over edges (fa, fb, cos), one that the edges must allow:
    (rows, cols, cosines). scipy's LAPJVsp on cost 2 − cos (≥ 1: it drops explicit zeros)."""
    _, first = np.unique(fa.astype(np.int64) * n_b + fb, return_index=True)
    fa, fb, cos = fa[first], fb[first], cos[first].astype(np.float64)
    graph = sp.csr_matrix((2.0 - cos, (fa, fb)), shape=(n_a, n_b))
    rows, cols = min_weight_full_bipartite_matching(graph)
    return rows, cols, 2.0 - np.asarray(graph[rows, cols]).ravel()


def pw_mcc_sparse(fa: np.ndarray, fb: np.ndarray, cos: np.ndarray, a: np.ndarray, b: np.ndarray, k: int = 16) -> float:
    """PW-MCC over candidate edges (fa[e], fb[e], cos[e]) of decoders a [n_a, d] and b [n_b, d].

    1. The best full assignment over the candidates plus the pairs (i, i), i < min(n_a, n_b), at their true
       cosines: those make a full assignment always exist (and are taken only where that pays).
    2. Where at most half the pairs are random-level (matched cosine < WEAK), those rows and their columns
       are assigned again over their own top-k candidates among each other (plus their step-1 pairs, so it
       never gets worse): candidates of the orphans of a sibling pair are crowded out by shared features.
    Each step is a valid one-to-one assignment, so the value is never above the exact one."""
    n_a, n_b = len(a), len(b)
    m = min(n_a, n_b)
    ident = np.arange(m)
    diag = (unit_rows(a[:m], np.float64) * unit_rows(b[:m], np.float64)).sum(1)
    rows, cols, got = _full_matching(np.concatenate([fa, ident]), np.concatenate([fb, ident]),
                                     np.concatenate([cos, diag]), n_a, n_b)
    weak = got < WEAK
    n_weak = int(weak.sum())
    if 2 <= n_weak <= m // 2:
        wa, wb, wcos = candidate_edges(topk_both(a[rows[weak]], b[cols[weak]], k))
        own = np.arange(n_weak)
        got_weak = _full_matching(np.concatenate([wa, own]), np.concatenate([wb, own]),
                                  np.concatenate([wcos, got[weak]]), n_weak, n_weak)[2]
        return float((got[~weak].sum() + got_weak.sum()) / m)
    return float(got.mean())


def pw_mcc(a: np.ndarray, b: np.ndarray, k: int = 16, edges=None, full: np.ndarray | None = None) -> float:
    """PW-MCC of decoders a [n_a, d] and b [n_b, d]: dense where n_a·n_b ≤ DENSE_MAX (from `full`, the
    cosine matrix, when the caller has it), else sparse over `edges` (fa, fb, cos), or over the top-k
    candidates both ways when none are given."""
    if len(a) * len(b) <= DENSE_MAX:
        return pw_mcc_dense(full if full is not None else full_scores(a, b).astype(np.float64))
    if edges is None:
        edges = candidate_edges(topk_both(a, b, k))
    return pw_mcc_sparse(*edges, a, b, k)


BASELINE_VERSION = 1
"""Version of pw_mcc_random's code path (its draw, its solver): kept values of another version are computed again."""


def baseline_key(n_a: int, n_b: int, d: int, k: int) -> tuple:
    """The random_baselines key (schema.RANDOM_BASELINE_KEY) of pw_mcc_random(n_a, n_b, d, k) by this code."""
    return ("pw_mcc", int(n_a), int(n_b), int(d), int(k), BASELINE_VERSION)


@functools.lru_cache(maxsize=64)
def pw_mcc_random(n_a: int, n_b: int, d: int, k: int = 16) -> float:
    """PW-MCC of two independent random unit dictionaries of these shapes, by the same code path (dense or
    sparse). One draw, seeded by the shape, whose spread between draws is 1.2e-3 at 400 x 800 features in 64
    dims, 4e-4 at 1k x 1k in 384, 5e-5 at 4k x 4k in 512. At 16k it costs a second candidate search, so the
    atlas keeps it (table random_baselines, keyed by baseline_key; `consistency` takes the kept ones) and a
    process caches it."""
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
                edges=None, full: np.ndarray | None = None,
                baselines: Mapping[tuple, float] | None = None) -> tuple[dict, list[dict]]:
    """(the pair_stats consistency columns of decoders a and b: pw_mcc, mmcs and their random baselines; the
    baselines computed here, as random_baselines rows). `baselines`: the kept ones, by baseline_key."""
    (n_a, d), n_b = a.shape, len(b)
    key = baseline_key(n_a, n_b, d, k)
    computed = []
    random = (baselines or {}).get(key)
    if random is None:
        t0 = time.perf_counter()
        random = pw_mcc_random(n_a, n_b, d, k)
        computed.append(dict(zip(RANDOM_BASELINE_KEY, key), value=random, seconds=time.perf_counter() - t0))
    return dict(pw_mcc=pw_mcc(a, b, k, edges, full), pw_mcc_random=random,
                mmcs=mmcs(a_absmax, b_absmax), mmcs_random=mmcs_random(n_a, n_b, d)), computed
