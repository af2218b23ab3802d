"""One-to-one assignment that may leave features unassigned (births and deaths).

Both solvers maximise Σ gain(i, j) over matchings, where gain > 0 means "better matched than left
alone" (score above the floor). Leaving a feature unassigned is worth 0, so garbage is never forced.

- dense: scipy's exact `linear_sum_assignment` on max(gain, 0), dropping pairs with gain ≤ 0 (exact for
  this objective; O(n³), for small pairs).
- sparse: scipy's `min_weight_full_bipartite_matching` (LAPJVsp) on the kNN candidate graph, made to
  always have a full matching with dummy nodes: a_i — dummy_a_i and dummy_b_j — b_j (cost 0: "left
  alone") and dummy_b_j — dummy_a_i for every candidate edge (i, j) (cost 0: completes a real pair).
  Exact over the candidate edges.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

DENSE_MAX = 4096 * 4096  # n_a * n_b up to which "auto" solves densely


def assign_dense(gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (rows, cols) maximising total positive gain; gain is [n_a, n_b]."""
    rows, cols = linear_sum_assignment(np.maximum(gain, 0.0), maximize=True)
    keep = gain[rows, cols] > 0
    return rows[keep], cols[keep]


def assign_sparse(rows: np.ndarray, cols: np.ndarray, gain: np.ndarray, n_a: int, n_b: int):
    """Same objective over candidate edges (rows[e], cols[e], gain[e]); edges with gain ≤ 0 are dropped."""
    keep = gain > 0
    r, c, g = rows[keep].astype(np.int64), cols[keep].astype(np.int64), gain[keep].astype(np.float64)
    _, first = np.unique(r * n_b + c, return_index=True)  # duplicate edges would add their costs
    r, c, g = r[first], c[first], g[first]
    if len(r) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # Node layout: left = [a_0..a_{n_a-1}, dummy_b_0..dummy_b_{n_b-1}], right = [b_0.., dummy_a_0..].
    # Every perfect matching has n_a + n_b edges, so a constant shift keeps costs positive (scipy
    # drops explicit zeros) without changing the optimum.
    shift = float(g.max()) + 1.0
    ar_a, ar_b = np.arange(n_a), np.arange(n_b)
    left = np.concatenate([r, ar_a, n_a + ar_b, n_a + c])
    right = np.concatenate([c, n_b + ar_a, ar_b, n_b + r])
    cost = np.concatenate([shift - g, np.full(n_a + n_b, shift), np.full(len(r), shift)])
    graph = sp.csr_matrix((cost, (left, right)), shape=(n_a + n_b, n_a + n_b))
    match_left, match_right = min_weight_full_bipartite_matching(graph)
    real = (match_left < n_a) & (match_right < n_b)
    return match_left[real], match_right[real]
