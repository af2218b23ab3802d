"""Match job: choose layer pairs, match each by each method, store matches and pair_stats.

Incremental and resumable: a pair already stored with the same parameters and weights (params_hash)
is skipped; work is published every `publish_every` seconds, so a killed job loses at most that much.
Pairs run as pure tasks (atlas_ingest.tasks) on an executor (in-process or Ray); only this driver writes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from atlas.match.params import MatchParams
from atlas.queries.common import require_saes
from atlas.store import Atlas, record_run
from atlas_ingest.executors import InProcess
from atlas_ingest.tasks import PairTask, SAERef, TaskResult, run_pair, shard_baselines, shard_stats


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
        baselines = tuple(w.random_baselines().items())  # kept per shape: no task computes a known one again
        tasks = []
        for a, b in pairs:
            for method in methods:
                task = PairTask(refs[a], refs[b], replace(params, method=method), baselines)
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
            w.put_random_baselines(shard_baselines(result.shard), run_id)
            w.replace_pair(a, b, method, Path(result.shard), shard_stats(result.shard), run_id)
            summary.computed.append((a, b, method))
    for result in results:
        Path(result.shard).unlink(missing_ok=True)
