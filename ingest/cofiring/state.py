"""What every co-firing state shares (sparse.SparseCoFiring, dense.DenseCoFiring, exact.ExactCoFiring): the statistics
of given pairs from a state's (Σab, count) lookup, and the bound on dense answers."""

from __future__ import annotations

from typing import Self

import numpy as np

DENSE_LIMIT = 4096 * 4096
"""Widest d_a × d_b for which `dense()` returns full host matrices (tests, small pairs)."""


class PairState:
    """What both co-firing states share: the statistics of given pairs from their (Σab, count) lookup, Pearson r
    of pairs (`_pair_r`) and firing counts (f_a, f_b)."""

    def finish(self) -> Self:
        """Multiply out what is pending."""
        self.flush()
        return self

    def stats(self, rows, cols) -> dict[str, np.ndarray]:
        """Pearson r, co-firing count, P(b fires | a fires) and Jaccard of firing sets for given pairs."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        sab, cnt = self.lookup(rows, cols)
        fa, fb = self.f_a[rows].astype(np.float64), self.f_b[cols].astype(np.float64)
        return {"pearson": self._pair_r(rows, cols, sab), "cofire": cnt, "p_b_given_a": cnt / np.maximum(fa, 1),
                "jaccard": cnt / np.maximum(fa + fb - cnt, 1)}

    def _check_dense(self) -> None:
        """dense() returns full host matrices: refused past DENSE_LIMIT cells."""
        if self.d_a * self.d_b > DENSE_LIMIT:
            raise ValueError(f"{self.d_a} x {self.d_b} is too wide for dense statistics; use stats() or topk()")
