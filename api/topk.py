"""Each feature's best outgoing candidates, held in memory per snapshot for the feature card.

The card shows every method's top-`top` candidates of a feature (rank <= top). Reading them from SQL
costs a query per card; this index holds the ones ranked <= RANKS in sorted numpy arrays (a binary
search per card), and the card falls back to SQL for larger `top`.
"""

from __future__ import annotations

import numpy as np

RANKS = 5


class TopCandidates:
    def __init__(self, con, ranks: int = RANKS):
        self.ranks = ranks
        t = con.sql("SELECT sae_a, feature_a, method, sae_b, feature_b, score, rank, assigned FROM matches "
                    "WHERE rank <= ?", params=[ranks]).to_arrow_table()
        saes = sorted(set(t["sae_a"].to_pylist()) | set(t["sae_b"].to_pylist()))
        self.names, code = saes, {n: i for i, n in enumerate(saes)}
        self.methods = sorted(set(t["method"].to_pylist()))
        mcode = {m: i for i, m in enumerate(self.methods)}
        a = np.array([code[s] for s in t["sae_a"].to_pylist()], dtype=np.int64)
        key = (a << 32) | t["feature_a"].to_numpy().astype(np.int64)
        order = np.argsort(key, kind="stable")
        self.key = key[order]
        self.method = np.array([mcode[m] for m in t["method"].to_pylist()], dtype=np.int16)[order]
        self.sae_b = np.array([code[s] for s in t["sae_b"].to_pylist()], dtype=np.int32)[order]
        self.feature_b = t["feature_b"].to_numpy()[order]
        self.score = t["score"].to_numpy()[order]
        self.rank = t["rank"].to_numpy()[order]
        self.assigned = t["assigned"].to_numpy(zero_copy_only=False)[order]
        self.code = code

    def out(self, sae_id: str, feature: int, top: int) -> list[tuple]:
        """(method, sae_b, feature_b, score, rank, assigned, 'out') of the candidates with rank <= top."""
        if sae_id not in self.code:
            return []
        k = (self.code[sae_id] << 32) | int(feature)
        lo, hi = np.searchsorted(self.key, k), np.searchsorted(self.key, k, side="right")
        return [(self.methods[self.method[i]], self.names[self.sae_b[i]], int(self.feature_b[i]), float(self.score[i]),
                 int(self.rank[i]), bool(self.assigned[i]), "out") for i in range(lo, hi) if self.rank[i] <= top]
