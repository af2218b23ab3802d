"""Jobs as pure tasks: inputs by reference (SAE id + weights location), outputs as Parquet shards.

The same functions run in-process or as Ray tasks on other machines: a task reads weights from shared
storage (a local path here; any path the workers can read), computes, writes its result shard under
the atlas's results folder and returns the shard's path with timings. Only the driver writes DuckDB.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

from atlas.match.pair import match_pair
from atlas.match.params import MatchParams
from atlas.store import parts


@dataclass(frozen=True)
class SAERef:
    sae_id: str
    source: str
    fmt: str
    sha256: str


@dataclass(frozen=True)
class PairTask:
    a: SAERef
    b: SAERef
    params: MatchParams
    baselines: tuple = ()
    """(key, value) of the random baselines the atlas keeps (atlas.match.consistency.baseline_key)."""

    @property
    def key(self) -> str:
        return f"{self.a.sae_id}__{self.b.sae_id}__{self.params.method}"

    @property
    def params_hash(self) -> str:
        return self.params.hash(self.a.sha256, self.b.sha256)


@dataclass
class TaskResult:
    key: str
    shard: str  # Parquet file of the matches rows; its metadata holds the pair stats
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    features: int
    host: str


# Per worker process: the last SAEs read (a stack walks them in order). Keyed by id *and* weight hash:
# after `ingest --replace` the same id names other weights, and a long-lived process must not reuse the old.
_CACHE: dict[tuple[str, str], object] = {}


def _weights(ref: SAERef):
    from atlas_ingest.sources import load_stored

    key = (ref.sae_id, ref.sha256)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load_stored(ref.sae_id, ref.source, ref.fmt, ref.sha256).weights
    return _CACHE[key]


def run_pair(task: PairTask, out_dir: str) -> TaskResult:
    """Match one pair and write its shard as a finished table file (parts.write_file: sorted, typed, with
    its run_id, plus the reverse file), so the driver publishes it by a rename. out_dir is the run's
    results folder, atlas.files/results/<run_id>."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = match_pair(_weights(task.a), _weights(task.b), task.a.sae_id, task.b.sae_id, task.params,
                        {tuple(k): v for k, v in task.baselines})
    out = Path(out_dir)
    meta = {"stats": json.dumps(dict(result.stats, params_hash=task.params_hash)), "task": json.dumps(asdict(task)),
            "baselines": json.dumps(result.baselines)}
    table = parts.conform("matches", result.matches, run_id=out.name).replace_schema_metadata(meta)
    shard = out / f"{task.key}.parquet"
    parts.write_file(shard, table)
    reverse = parts.reverse_rows(task.params.method, table)
    if reverse is not None:
        parts.write_file(shard.with_name(f"{task.key}.by_b.parquet"), reverse.replace_schema_metadata(None))
    return TaskResult(key=task.key, shard=str(shard), seconds=time.perf_counter() - t0,
                      cpu_seconds=time.process_time() - c0,
                      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      features=int(result.stats["n_a"]), host=os.uname().nodename)


def shard_stats(path: str) -> dict:
    """The pair stats a shard carries in its footer."""
    return json.loads(pq.read_schema(path).metadata[b"stats"])


def shard_baselines(path: str) -> list[dict]:
    """The random baselines its task computed (random_baselines rows), from a shard's footer."""
    return json.loads(pq.read_schema(path).metadata.get(b"baselines", b"[]"))
