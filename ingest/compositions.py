"""AND / OR / PASS compositions (Balcells et al.): for each layer-(l+1) feature, whether it fires as a
quasi-boolean combination of its most correlated layer-l features: a second streamed pass over the tokens
the co-firing state saw, counting joint firings of the planned parents (the `compositions` table)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from atlas.match.candidates import Candidates
from atlas_ingest.cofiring.sparse import SparseCoFiring, to_csr


@dataclass
class Compositions:
    """Counts behind AND / OR / PASS for each b-feature and its `parents` most correlated a-features."""

    parents: np.ndarray  # [d_b, P] a-features, −1 where fewer
    pairs: np.ndarray  # [Q, 2] slot pairs (p1, p2) with p1 < p2
    f_b: np.ndarray
    f_a: np.ndarray
    single: np.ndarray  # [d_b, P] tokens where b and parent p fire
    both: np.ndarray  # [d_b, Q] tokens where parents p1 and p2 fire
    triple: np.ndarray  # [d_b, Q] tokens where b, p1 and p2 fire

    @classmethod
    def plan(cls, cand: Candidates, state: SparseCoFiring, parents: int = 5, min_r: float = 0.05) -> Compositions:
        par = cand.b2a_index[:, :parents].astype(np.int64).copy()
        par[cand.b2a_score[:, :parents] <= min_r] = -1
        P = par.shape[1]
        pairs = np.array([(x, y) for x in range(P) for y in range(x + 1, P)], np.int64).reshape(-1, 2)
        d_b = len(par)
        return cls(par, pairs, state.f_b, state.f_a, np.zeros((d_b, P)), np.zeros((d_b, len(pairs))),
                   np.zeros((d_b, len(pairs))))

    def add(self, a, b) -> None:
        """Count on one batch (the same tokens as the first pass, any batching)."""
        A, B = to_csr(a), to_csr(b)
        d_a = A.shape[1]
        keys_a = np.repeat(np.arange(A.shape[0], dtype=np.int64), np.diff(A.indptr)) * d_a + A.indices
        tok_b = np.repeat(np.arange(B.shape[0], dtype=np.int64), np.diff(B.indptr))
        par = self.parents[B.indices]  # [nnz_b, P]: for each firing (token, b), its parents
        q = tok_b[:, None] * d_a + par
        pos = np.minimum(np.searchsorted(keys_a, q), max(len(keys_a) - 1, 0))
        fires = (par >= 0) & (keys_a[pos] == q) if len(keys_a) else np.zeros_like(par, bool)
        j = B.indices
        for p in range(par.shape[1]):
            self.single[:, p] += np.bincount(j, fires[:, p], len(self.parents))
        for s, (p1, p2) in enumerate(self.pairs):
            self.triple[:, s] += np.bincount(j, fires[:, p1] & fires[:, p2], len(self.parents))
        # parents firing together regardless of b: walk the rarer parent's tokens, look up the other
        csc = A.tocsc()
        for s, (p1, p2) in enumerate(self.pairs):
            x, y = self.parents[:, p1], self.parents[:, p2]
            ok = (x >= 0) & (y >= 0)
            swap = ok & (self.f_a[np.maximum(x, 0)] > self.f_a[np.maximum(y, 0)])
            lo, hi = np.where(swap, y, x), np.where(swap, x, y)
            self.both[:, s] += _co_count(csc, keys_a, lo, hi, ok)

    def find(self, pearson_top: np.ndarray, dec_cos_top: np.ndarray, min_jaccard: float = 0.5,
             margin: float = 0.15, pass_r: float = 0.9, pass_cos: float = 0.9) -> list[tuple]:
        """(feature_b, kind, [parents], score) for layer-b features that act as a quasi-boolean combination
        of layer-a features (Balcells et al.). On firing sets over the same tokens:
        - PASS: the best parent has Pearson r ≥ 0.9 and decoder cosine ≥ 0.9 (the feature is carried through);
        - AND:  two parents whose joint firing (both fire) has Jaccard ≥ 0.5 with b's firing and beats the
                best single parent's Jaccard by ≥ 0.15;
        - OR:   the same for the union of the two parents' firing (either fires).
        Parents are b's most correlated a-features (r > 0.05); score is the Jaccard (r for PASS).
        `pearson_top` and `dec_cos_top` are [d_b, P] for the planned parents."""
        fb = self.f_b[:, None].astype(np.float64)
        fpar = np.where(self.parents >= 0, self.f_a[np.maximum(self.parents, 0)], 0).astype(np.float64)
        single = self.single / np.maximum(fb + fpar - self.single, 1)
        single = np.where(self.parents >= 0, single, 0.0)
        p1, p2 = self.pairs[:, 0], self.pairs[:, 1]
        valid = (self.parents[:, p1] >= 0) & (self.parents[:, p2] >= 0)
        and_j = self.triple / np.maximum(fb + self.both - self.triple, 1)
        inter_or = self.single[:, p1] + self.single[:, p2] - self.triple
        union = fpar[:, p1] + fpar[:, p2] - self.both
        or_j = inter_or / np.maximum(fb + union - inter_or, 1)
        out = []
        for j in np.flatnonzero(self.f_b > 0):
            if self.parents[j, 0] >= 0 and pearson_top[j, 0] >= pass_r and dec_cos_top[j, 0] >= pass_cos:
                out.append((int(j), "PASS", [int(self.parents[j, 0])], float(pearson_top[j, 0])))
                continue
            best_single = single[j].max(initial=0.0)
            found = None
            for s in np.flatnonzero(valid[j]):
                for kind, jac in (("AND", and_j[j, s]), ("OR", or_j[j, s])):
                    if jac >= min_jaccard and jac >= best_single + margin and (found is None or jac > found[3]):
                        found = (int(j), kind, sorted([int(self.parents[j, p1[s]]), int(self.parents[j, p2[s]])]),
                                 float(jac))
            if found:
                out.append(found)
        return out


def _co_count(csc: sp.csc_matrix, keys_a: np.ndarray, lo: np.ndarray, hi: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """For each slot j (where ok): tokens of this batch where features lo[j] and hi[j] both fire
    (csc: the batch [t, d_a]; keys_a: its sorted token * d_a + feature keys)."""
    out = np.zeros(len(lo))
    if not ok.any() or not len(keys_a):
        return out
    slots = np.flatnonzero(ok)
    starts, ends = csc.indptr[lo[slots]], csc.indptr[lo[slots] + 1]
    n = ends - starts
    if n.sum() == 0:
        return out
    owner = np.repeat(np.arange(len(slots)), n)
    offs = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    toks = csc.indices[np.repeat(starts, n) + offs].astype(np.int64)
    q = toks * csc.shape[1] + hi[slots][owner]
    pos = np.minimum(np.searchsorted(keys_a, q), len(keys_a) - 1)
    out[slots] = np.bincount(owner, keys_a[pos] == q, len(slots))
    return out

