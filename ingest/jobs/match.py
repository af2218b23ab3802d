"""Match job: choose layer pairs, match each by each method, store matches and pair_stats.

Incremental and resumable: a pair already stored with the same parameters and weights (params_hash)
is skipped; work is published every `publish_every` seconds, so a killed job loses at most that much.
Pairs run as pure tasks (ingest.tasks) on an executor (in-process or Ray); only this driver writes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path


from atlas.match.pair import MatchParams
from atlas.store import Atlas, record_run
from ingest.executors import InProcess
from ingest.tasks import PairTask, SAERef, TaskResult, require_saes, run_pair, shard_stats

SELECTIONS = ("adjacent", "distance", "siblings", "widths", "flow", "list")


@dataclass
class MatchSummary:
    computed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    results: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        """Pairs, features/s, CPU seconds and peak memory per worker."""
        cpu = sum(r.cpu_seconds for r in self.results)
        feats = sum(r.features for r in self.results)
        peak = max((r.peak_rss_mb for r in self.results), default=0)
        hosts = len({r.host for r in self.results})
        return (f"{len(self.computed)} pair-methods computed, {len(self.skipped)} skipped in {self.seconds:.1f} s; "
                f"{feats / self.seconds if self.seconds else 0:,.0f} features/s; {cpu:.1f} CPU s in tasks; "
                f"peak memory per worker {peak:.0f} MB on {hosts} host(s)")


def select_pairs(con, selection: str = "adjacent", distance: int = 1, stack: str | None = None,
                 pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """(sae_a, sae_b) pairs, earlier layer first: adjacent layers, all pairs within `distance` layers of
    a stack, siblings (same model, hook and width; other seed, dataset or variant such as L0), widths (same model,
    hook, seed and dataset; each width with the next larger one, narrow first), flow (MLP/attention-out SAEs
    with the residual SAE of their layer, for feature-flow origins), or an explicit list."""
    if selection == "list":
        require_saes({r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}, (s for p in pairs or [] for s in p))
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
             AND (a.seed IS DISTINCT FROM b.seed OR a.dataset IS DISTINCT FROM b.dataset
                  OR a.variant IS DISTINCT FROM b.variant)  -- other sparsity (Gemma Scope L0s), trainer
            WHERE ? IS NULL OR a.stack = ? OR b.stack = ?
            ORDER BY a.layer, a.sae_id, b.sae_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    if selection == "flow":  # MLP-out / attention-out SAEs against the residual SAE of their layer
        sql = """
            SELECT x.sae_id, r.sae_id FROM saes x JOIN saes r
              ON x.model = r.model AND x.layer = r.layer AND x.d_in = r.d_in AND x.site IN ('mlp', 'attn')
             AND r.site = 'resid' AND x.seed IS NOT DISTINCT FROM r.seed AND x.dataset IS NOT DISTINCT FROM r.dataset
            WHERE ? IS NULL OR r.stack = ? OR x.stack = ?
            ORDER BY r.layer, x.site, r.sae_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    if selection == "widths":  # each SAE with the next larger width; among several (L0 variants) the nearest L0
        sql = """
            WITH s AS (SELECT *, coalesce(kind, 'sae') AS kind_ FROM saes),
            pairs AS (SELECT a.sae_id AS a_id, a.layer, a.d_sae AS d_a, b.sae_id AS b_id, b.d_sae AS d_b,
                             a.stack AS stack_a, b.stack AS stack_b,
                             abs(coalesce(b.l0, 0) - coalesce(a.l0, 0)) AS l0_gap
                      FROM s a JOIN s b ON a.model = b.model AND a.hook = b.hook AND a.kind_ = b.kind_
                       AND a.seed IS NOT DISTINCT FROM b.seed AND a.dataset IS NOT DISTINCT FROM b.dataset
                       AND b.d_sae > a.d_sae),
            ranked AS (SELECT *, row_number() OVER (PARTITION BY a_id ORDER BY d_b, l0_gap, b_id) AS rn FROM pairs)
            SELECT a_id, b_id FROM ranked
            WHERE rn = 1 AND (? IS NULL OR stack_a = ? OR stack_b = ?)
            ORDER BY layer, d_a, a_id"""
        return [tuple(r) for r in con.execute(sql, [stack, stack, stack]).fetchall()]
    raise ValueError(f"unknown pair selection {selection!r}; known: {', '.join(SELECTIONS)}")


def run_match(atlas: Atlas, pairs: list[tuple[str, str]], methods: list[str], params: MatchParams,
              publish_every: float = 60.0, progress=None, executor=None, batch: int = 8) -> MatchSummary:
    """Match every (pair, method) not already stored with these parameters and weights.

    Tasks run on `executor` (in-process by default, or Ray) and write Parquet shards under
    atlas.files/results/<run>; the driver commits them `batch` pairs per transaction."""
    executor = executor or InProcess()
    summary = MatchSummary()
    t0 = time.perf_counter()
    job_params = {"pairs": len(pairs), "methods": methods, "executor": executor.name, **params.__dict__}
    with atlas.write() as w, record_run(w, "match", job_params) as run_id:
        results_root = atlas.dir / "results"
        if results_root.exists():  # shards of a killed run: we hold the write lock, nobody else owns them
            shutil.rmtree(results_root)
        out_dir = results_root / run_id
        refs = {r[0]: SAERef(*r) for r in w.con.execute("SELECT sae_id, source, format, sha256 FROM saes").fetchall()}
        require_saes(refs, (s for p in pairs for s in p))
        done = {tuple(r) for r in w.con.execute("SELECT sae_a, sae_b, method, params_hash FROM pair_stats").fetchall()}
        tasks = []
        for a, b in pairs:
            for method in methods:
                task = PairTask(refs[a], refs[b], replace(params, method=method))
                if (a, b, method, task.params_hash) in done:
                    summary.skipped.append((a, b, method))
                    if progress:
                        progress(a, b, method)
                else:
                    tasks.append(task)
        by_key = {t.key: t for t in tasks}
        waiting: list[TaskResult] = []
        for result in executor.map(run_pair, tasks, str(out_dir)):
            waiting.append(result)
            summary.results.append(result)
            if len(waiting) >= batch:
                _commit(w, [by_key[r.key] for r in waiting], waiting, run_id, summary)
                waiting = []
                w.publish_every(publish_every)
            if progress:
                t = by_key[result.key]
                progress(t.a.sae_id, t.b.sae_id, t.params.method)
        if waiting:
            _commit(w, [by_key[r.key] for r in waiting], waiting, run_id, summary)
        shutil.rmtree(out_dir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _commit(w, tasks: list[PairTask], results: list[TaskResult], run_id: str, summary: MatchSummary) -> None:
    """One transaction for a batch of finished pairs: readers see all of it or none."""
    with w.transaction():
        for task, result in zip(tasks, results):
            a, b, method = task.a.sae_id, task.b.sae_id, task.params.method
            w.replace_pair(a, b, method, Path(result.shard), shard_stats(result.shard), run_id)
            summary.computed.append((a, b, method))
    for result in results:
        Path(result.shard).unlink(missing_ok=True)
