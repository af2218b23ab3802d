"""Match job: choose layer pairs, match each by each method, store matches and pair_stats.

Incremental and resumable: a pair already stored with the same parameters and weights (params_hash)
is skipped; work is published every `publish_every` seconds, so a killed job loses at most that much.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import pyarrow as pa

from atlas.match.pair import MatchParams, match_pair
from atlas.store import Atlas, record_run
from ingest.sources import load_stored

SELECTIONS = ("adjacent", "distance", "siblings", "list")


@dataclass
class MatchSummary:
    computed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0


def select_pairs(con, selection: str = "adjacent", distance: int = 1, stack: str | None = None,
                 pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(sae_a, sae_b) pairs, earlier layer first: adjacent layers, all pairs within `distance` layers of
    a stack, siblings (same model, hook and width; other seed or dataset), or an explicit list."""
    if selection == "list":
        known = {r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}
        for a, b in pairs or []:
            for s in (a, b):
                if s not in known:
                    raise KeyError(f"unknown SAE {s!r}: see `atlas saes`")
        return list(pairs or [])
    if selection in ("adjacent", "distance"):
        sql = """
            WITH s AS (SELECT sae_id, stack, layer,
                              dense_rank() OVER (PARTITION BY stack ORDER BY layer) AS pos FROM saes
                       WHERE ? IS NULL OR stack = ?)
            SELECT a.sae_id, b.sae_id FROM s a JOIN s b ON a.stack = b.stack
            WHERE b.pos > a.pos AND b.pos - a.pos <= ?
            ORDER BY a.stack, b.pos - a.pos, a.layer"""
        # adjacent = neighbours among the layers the stack has, so a stack with gaps still chains
        return [tuple(r) for r in con.execute(sql, [stack, stack, 1 if selection == "adjacent" else distance]).fetchall()]
    if selection == "siblings":
        sql = """
            SELECT a.sae_id, b.sae_id FROM saes a JOIN saes b
              ON a.model = b.model AND a.hook = b.hook AND a.d_sae = b.d_sae AND a.sae_id < b.sae_id
             AND (a.seed IS DISTINCT FROM b.seed OR a.dataset IS DISTINCT FROM b.dataset)
            WHERE ? IS NULL OR a.stack = ? OR b.stack = ?
            ORDER BY a.layer, a.sae_id, b.sae_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    raise ValueError(f"unknown pair selection {selection!r}; known: {', '.join(SELECTIONS)}")


class WeightCache:
    """The last few SAEs' weights, so a stack walked in layer order reads each file about once."""

    def __init__(self, con, size: int = 4):
        self.con, self.size, self.items = con, size, OrderedDict()

    def get(self, sae_id: str):
        if sae_id in self.items:
            self.items.move_to_end(sae_id)
            return self.items[sae_id]
        row = self.con.execute("SELECT source, format, sha256 FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
        if row is None:
            raise KeyError(f"unknown SAE {sae_id!r}")
        self.items[sae_id] = load_stored(row[0], row[1], row[2], sae_id)
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return self.items[sae_id]


def run_match(atlas: Atlas, pairs: list[tuple[str, str]], methods: list[str], params: MatchParams,
              publish_every: float = 60.0, progress=None) -> MatchSummary:
    summary = MatchSummary()
    t0 = time.perf_counter()
    job_params = {"pairs": len(pairs), "methods": methods, **params.__dict__}
    with atlas.write() as w, record_run(w, "match", job_params) as run_id:
        cache = WeightCache(w.con)
        sha = dict(w.con.execute("SELECT sae_id, sha256 FROM saes").fetchall())
        done = {tuple(r) for r in w.con.execute("SELECT sae_a, sae_b, method, params_hash FROM pair_stats").fetchall()}
        for a, b in pairs:
            for method in methods:
                p = replace(params, method=method)
                h = p.hash(sha[a], sha[b])
                if (a, b, method, h) in done:
                    summary.skipped.append((a, b, method))
                else:
                    result = match_pair(cache.get(a), cache.get(b), a, b, p)
                    with w.transaction() as con:
                        con.execute("DELETE FROM matches WHERE sae_a = ? AND sae_b = ? AND method = ?", [a, b, method])
                        con.execute("DELETE FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?", [a, b, method])
                        n = result.matches.num_rows
                        w.insert_arrow("matches", result.matches.append_column("run_id", pa.repeat(run_id, n)))
                        stats = dict(result.stats, sae_a=a, sae_b=b, method=method, params_hash=h, run_id=run_id)
                        w.insert_arrow("pair_stats", pa.Table.from_pylist([stats]))
                    summary.computed.append((a, b, method))
                    w.publish_every(publish_every)
                if progress:
                    progress(a, b, method)
    summary.seconds = time.perf_counter() - t0
    return summary
