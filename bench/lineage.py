"""`python -m bench lineage`: the served lineage beside what any answer costs on the same server. `atlas serve
--workers 2` answers GET .../lineage of random features and GET /health, each under the same load (wrk where it is
installed, bench/load.py), at 2 and 8 connections; the notebook API (atlas.open, in-process, no HTTP) answers the
same lineages. Targets (issue 33): the served lineage's p50 at most 4x /health's, at least 1000 lineages/s with 2
workers, the notebook's p50 within 1.5x of the served one. The load average is kept with the numbers.

The atlas is --lineage-atlas, or the scale section's big atlas (--rows, --scale-dir) where it is built, or the
stack section's; one written by another schema version is copied (hard links: its table files are shared, never
written) into --workdir and upgraded there, so the original stays as it was.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

CONNECTIONS = (2, 8)
TARGETS = "served lineage p50 <= 4x /health p50; >= 1000 lineage req/s with 2 workers; notebook p50 <= 1.5x served"


def servable(path: Path, work: Path, log=print) -> Path:
    """`path`, or where its schema version is not this code's, an upgraded copy under `work` (kept: a rerun serves
    it again)."""
    from atlas.store import Atlas
    from atlas.store.schema import SchemaVersionError

    for atlas in (Atlas(path), Atlas(work / f"upgraded-{path.parent.name}" / path.name)):
        try:
            atlas.read().close()
            return atlas.path
        except (SchemaVersionError, FileNotFoundError) as e:
            reason = e
    copy = Atlas(work / f"upgraded-{path.parent.name}" / path.name)
    shutil.rmtree(copy.path.parent, ignore_errors=True)  # a copy left by a run that stopped half-way
    copy.path.parent.mkdir(parents=True)
    log(f"lineage: {path}: {reason}; serving an upgraded copy in {copy.path.parent}")
    Atlas(path).copy_to(copy.path)
    with copy.write():  # the job that upgrades it (views, macros, schema version)
        pass
    return copy.path


def notebook_p50(path: Path, picks: list[tuple[str, int]], n: int = 300) -> dict:
    """The notebook API's lineage of the first `n` picks, in-process: p50 and mean in ms."""
    import atlas

    times = []
    with atlas.open(path) as a:
        for s, f in picks[:4]:  # what the first calls build (caches, open indexes), as the server's warm-up
            a.lineage(s, f)
        for s, f in picks[:n]:
            t0 = time.perf_counter()
            a.lineage(s, f)
            times.append(time.perf_counter() - t0)
    return {"p50_ms": 1e3 * float(np.median(times)), "mean_ms": 1e3 * float(np.mean(times)), "lineages": len(times)}


def run(atlas_path: Path, work: Path, seconds: float = 10, client: str = "auto", log=print) -> dict:
    """The numbers of the module docstring on the atlas at `atlas_path`."""
    import httpx

    from bench.load import http_load
    from bench.scale import random_features
    from bench.server import serving

    path = servable(atlas_path, work, log)
    picks = random_features(path, 2000, 4)
    from atlas.store import Atlas

    with Atlas(path).read() as snap:
        rows = snap.execute("SELECT sum(n_rows) FROM parts WHERE table_name = 'matches'").fetchone()[0]
    urls = [f"/api/saes/{s}/features/{f}/lineage" for s, f in picks]
    out: dict = {"atlas": str(atlas_path), "served": str(path), "match_rows": int(rows or 0),
                 "server": "atlas serve --workers 2", "load_before": os.getloadavg()}
    with serving(path, "--workers", "2") as server:
        for u in urls[:8] + ["/health"] * 4:  # both workers build what a snapshot keeps
            assert httpx.get(server.base + u, timeout=300).status_code == 200, u
        for c in CONNECTIONS:
            health = http_load(["/health"], server.base, seconds, c, client)
            lineage = http_load(urls, server.base, seconds, c, client)
            out[str(c)] = {"health": health, "lineage": lineage, "ratio": lineage["p50_ms"] / health["p50_ms"]}
            log(f"lineage: {c} connections: lineage p50 {lineage['p50_ms']:.2f} ms, {lineage['req_per_s']:.0f} req/s; "
                f"/health p50 {health['p50_ms']:.2f} ms, {health['req_per_s']:.0f} req/s; ratio {out[str(c)]['ratio']:.2f}")
    out["notebook"] = nb = notebook_p50(path, picks)
    served = out[str(CONNECTIONS[0])]["lineage"]["p50_ms"]
    out["notebook_vs_served"] = nb["p50_ms"] / served
    out["load_after"] = os.getloadavg()
    out["best_req_per_s"] = max(out[str(c)]["lineage"]["req_per_s"] for c in CONNECTIONS)
    log(f"lineage: notebook p50 {nb['p50_ms']:.2f} ms = {out['notebook_vs_served']:.2f}x the served p50; load "
        f"{out['load_before'][0]:.1f} -> {out['load_after'][0]:.1f}")
    out["target"] = TARGETS
    return out
