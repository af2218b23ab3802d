"""`python -m bench scale`: the atlas at release scale (issue 16). A synthetic atlas of >= 300M match rows in
the table-file layout, and the numbers that layout promises: the time of a job that adds ONE pair-method, at
two sizes (target <= 1 s, independent of size); lineage and feature card of random features over HTTP with
`atlas serve --workers 2` (bench/load.py); the server's RSS (all its processes) after 10k random lineages;
bytes on disk per match row; the export of `matches` over HTTP with the server's peak RSS meanwhile; the SQL
macros a `duckdb -readonly` user calls (lineage_edges, lineage_nodes, point lookups) against the served lineage,
on one connection (measure_sql).

The generator measures storage, not matching: per pair-method one DuckDB `COPY (SELECT ... FROM range())`
writes the table file in the matches schema and sort order, and its reverse file; the store adopts them by a
rename (Writer.replace_pair), SAE and feature rows through the store's API, all in one job. The data looks like
a matched family: each feature has k = 16 candidates, rank 1 assigned to a permutation of the next layer's
features, ~1.6 edges per feature pass 0.5 (10% of rows: the reverse files), carry chains run across layers with
random breaks, a few percent of features split, so lineages have a few to tens of nodes. Feature 0 of every stack's first layer is a
planted chain carried through every layer (planted_chain()).

Generated atlases are cached under --scale-dir (default /tmp/scale/), keyed by their shape and GEN_VERSION.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GEN_VERSION = 2
"""Bump when the generated data changes: cached atlases of another version are rebuilt."""
K = 16
D_IN = 2304
METHOD = "decoder_cos"
ADJ_ALIVE = 0.85
"""Share of features whose carry to the next layer passes tau = 0.7 (the rest break the chain there)."""
GAP_ALIVE = 0.4
"""The same for distance-2 carries (the gaps lineage takes where a chain breaks)."""
SPLIT = 0.03
"""Share of carried features whose rank-2 candidate is a split (feature_b's best parent, score >= 0.7)."""


@dataclass(frozen=True)
class Shape:
    """Which pairs an atlas of about `rows` match rows holds: adjacent and distance-2 pairs of stacks of
    `layers` SAEs of `d_sae` features, stack after stack, as many as the rows need."""
    rows: int
    d_sae: int = 16384
    layers: int = 26

    @property
    def per_pair(self) -> int:
        return self.d_sae * K

    @property
    def n_pairs(self) -> int:
        return max(1, math.ceil(self.rows / self.per_pair))

    def pairs(self) -> list[tuple[int, int, int]]:
        """(stack, layer_a, layer_b) of every pair, in generation order."""
        one = [(la, lb) for la in range(self.layers) for lb in (la + 1, la + 2) if lb < self.layers]
        out = []
        for stack in range(self.n_pairs // len(one) + 1):
            out += [(stack, la, lb) for la, lb in one]
        return out[: self.n_pairs]

    @property
    def stacks(self) -> int:
        return self.pairs()[-1][0] + 1

    @property
    def match_rows(self) -> int:
        return self.n_pairs * self.per_pair

    @property
    def key(self) -> str:
        return f"r{self.match_rows}-f{self.d_sae}-l{self.layers}-v{GEN_VERSION}"


def sae_id(stack: int, layer: int) -> str:
    return f"scale-s{stack:02d}-L{layer:02d}"


def _coprime(n: int) -> int:
    return next(m for m in (7919, 7907, 7901, 7883, 7877) if math.gcd(m, n) == 1)


def carry(n: int, distance: int) -> tuple[int, int]:
    """(m, c) with feature_b = (m * feature_a + c) mod n the carry target `distance` layers on: the
    permutation p(i) = (7919 i + 12345) mod n applied `distance` times, so chains agree across pair distances."""
    m1, c1 = _coprime(n), 12345 % n
    m, c = 1, 0
    for _ in range(distance):
        m, c = (m1 * m) % n, (m1 * c + c1) % n
    return m, c


def planted_chain(shape: Shape, stack: int = 0) -> list[tuple[str, int]]:
    """The planted carry chain of a stack: feature 0 of its first layer, carried (score >= 0.72) to every later layer."""
    m, c = carry(shape.d_sae, 1)
    out, f = [], 0
    for layer in range(shape.layers):
        out.append((sae_id(stack, layer), f))
        f = (m * f + c) % shape.d_sae
    return out


def _copy_options() -> str:
    from atlas.store.parts import ROW_GROUP

    return f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP}, COMPRESSION zstd, PARQUET_VERSION v2)"


def pair_sql(shape: Shape, stack: int, la: int, lb: int, run_id: str, path: Path, method: str = METHOD) -> str:
    """COPY one pair-method's table file: columns, types and sort order of the matches table (parts.py)."""
    n, d = shape.d_sae, lb - la
    m, c = carry(n, d)
    planted = planted_chain(shape, stack)[la][1]
    alive = ADJ_ALIVE if d == 1 else GAP_ALIVE
    seed = (stack * 1000 + la) * 10 + d
    return f"""
    COPY (
      WITH t AS (
        SELECT i // {K} AS fa, i % {K} + 1 AS r, hash(i, {seed}) AS h, hash(i // {K}, {seed}, 1) AS hf
        FROM range({n * K}) AS g(i)),
      u AS (
        SELECT fa, r, (h & 1048575) / 1048576.0 AS u1, ((h >> 40) & 1048575) / 1048576.0 AS u3, (h >> 20) & 1048575 AS hb,
               (fa * {m} + {c}) % {n} AS cb, fa = {planted} AS planted,
               (hf & 1048575) / 1048576.0 < {alive} OR fa = {planted} AS alive,
               ((hf >> 20) & 1048575) / 1048576.0 < {SPLIT} AND fa <> {planted} AS split
        FROM t)
      SELECT '{sae_id(stack, la)}' AS sae_a, fa::INTEGER AS feature_a, '{sae_id(stack, lb)}' AS sae_b,
             (CASE WHEN r = 1 THEN cb ELSE (cb + 1 + hb % {max(n - 1, 1)}) % {n} END)::INTEGER AS feature_b,
             '{method}' AS method,
             (CASE WHEN r = 1 THEN CASE WHEN alive THEN 0.72 + 0.26 * u1 ELSE 0.57 + 0.12 * u1 END
                   WHEN r = 2 THEN CASE WHEN alive AND split THEN 0.70 + 0.015 * u1 ELSE 0.46 + 0.10 * u1 END
                   ELSE 0.48 - 0.012 * r + 0.01 * u1 END)::FLOAT AS score,
             r::SMALLINT AS rank, r = 1 AS assigned, '{run_id}' AS run_id,
             (CASE WHEN r = 1 OR (r = 2 AND alive AND split) THEN 1 ELSE 2 + floor(u3 * 15) END)::SMALLINT AS rank_b
      FROM u ORDER BY feature_a, rank
    ) TO '{path}' {_copy_options()}"""


def write_shard(gen, shape: Shape, stack: int, la: int, lb: int, run_id: str, folder: Path) -> tuple[Path, dict]:
    """A task-like shard (and its .by_b reverse file) of one pair, and its pair_stats row."""
    from atlas.methods import METHODS

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sae_id(stack, la)}--{sae_id(stack, lb)}.parquet"
    gen.execute(pair_sql(shape, stack, la, lb, run_id, path))
    floor = METHODS[METHOD].index_floor
    gen.execute(f"COPY (SELECT * FROM read_parquet('{path}') WHERE score >= {floor} ORDER BY feature_b, feature_a) "
                f"TO '{path.with_name(path.stem + '.by_b.parquet')}' {_copy_options()}")
    n_matched, mean, median = gen.execute(
        f"SELECT count(*) FILTER (score >= 0.7), avg(score), median(score) FROM read_parquet('{path}') "
        f"WHERE assigned").fetchone()
    n = shape.d_sae
    stats = {"n_a": n, "n_b": n, "n_assigned": n, "n_matched": n_matched, "matched_frac": n_matched / n,
             "mean_score": mean, "median_score": median, "tau": 0.7, "params_hash": f"scale-v{GEN_VERSION}"}
    return path, stats


def _gen_connection():
    import duckdb

    return duckdb.connect(":memory:", config={"threads": 2, "memory_limit": "2GB"})


def sae_rows(shape: Shape, stack: int) -> list[dict]:
    return [{"sae_id": sae_id(stack, layer), "model": "scale-model", "hook": f"blocks.{layer}.hook_resid_post",
             "site": "resid", "layer": layer, "d_in": D_IN, "d_sae": shape.d_sae, "arch": "jumprelu",
             "stack": f"scale-s{stack:02d}", "source": "bench/scale.py", "format": "synthetic",
             "sha256": f"{stack:04d}{layer:04d}".ljust(64, "0"), "release": "scale", "variant": f"s{stack:02d}"}
            for layer in range(shape.layers)]


def feature_rows(gen, shape: Shape, stack: int):
    ids = ", ".join(f"'{sae_id(stack, layer)}'" for layer in range(shape.layers))
    return gen.sql(f"""
        SELECT s.sae_id, i::INTEGER AS feature, (0.8 + (hash(s.sae_id, i) % 4000) / 10000.0)::FLOAT AS dec_norm,
               ((hash(i, s.sae_id) % 1000) / 1000.0)::FLOAT AS threshold,
               ((hash(s.sae_id, i, 2) % 100000) / 1e7)::FLOAT AS density,
               (1 + (hash(s.sae_id, i, 3) % 10000) / 1000.0)::FLOAT AS max_act, NULL::VARCHAR AS label
        FROM (SELECT unnest([{ids}]) AS sae_id) s, range({shape.d_sae}) AS g(i)
        ORDER BY s.sae_id, i""").to_arrow_table()


def generate(shape: Shape, folder: Path, log=print) -> tuple["object", dict]:
    """The atlas of `shape` under `folder` (built once; cached while scale.json says it is complete)."""
    from tqdm.auto import tqdm

    from atlas.store import Atlas

    marker = folder / "scale.json"
    atlas = Atlas(folder / "atlas.duckdb")
    if marker.exists() and atlas.exists():
        info = json.loads(marker.read_text())
        if info.get("shape") == asdict(shape) and info.get("version") == GEN_VERSION:
            log(f"scale: using the cached atlas {atlas.path} ({info['match_rows']:,} match rows, generated in "
                f"{info['generate_s']:.0f} s)")
            return atlas, dict(info, cached=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_id = f"scale-{shape.key}"
    gen = _gen_connection()
    t0 = time.perf_counter()
    log(f"scale: generating {shape.match_rows:,} match rows ({shape.n_pairs} pair-methods, {shape.stacks} stacks x "
        f"{shape.layers} layers x {shape.d_sae} features) at {atlas.path}")
    with atlas.write() as w:
        w.insert_rows("runs", [{"run_id": run_id, "kind": "scale-bench", "params": json.dumps(asdict(shape)),
                                "started_at": time.strftime("%Y-%m-%d %H:%M:%S"), "status": "running"}])
        for stack in range(shape.stacks):
            w.insert_rows("saes", sae_rows(shape, stack))
            w.insert_arrow("features", feature_rows(gen, shape, stack))
        staging = atlas.dir / "staging"
        for stack, la, lb in tqdm(shape.pairs(), desc="scale: pair-methods", unit="pair", mininterval=5):
            path, stats = write_shard(gen, shape, stack, la, lb, run_id, staging)
            w.replace_pair(sae_id(stack, la), sae_id(stack, lb), METHOD, path, stats, run_id)
        w.finish_run(run_id, time.strftime("%Y-%m-%d %H:%M:%S"))
        shutil.rmtree(staging, ignore_errors=True)
    info = {"shape": asdict(shape), "version": GEN_VERSION, "match_rows": shape.match_rows, "pairs": shape.n_pairs,
            "saes": shape.stacks * shape.layers, "generate_s": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    log(f"scale: generated in {info['generate_s']:.0f} s")
    return atlas, dict(info, cached=False)



# ---- measurements -----------------------------------------------------------------------------------------

def publish(atlas, shape: Shape, work: Path, repeats: int = 3) -> dict:
    """Jobs that each add ONE pair-method (distance 3 in stack 0: no atlas of this shape holds it) to a
    hard-link copy of the atlas: open, adopt the shard, publish; medians of `repeats` runs."""
    copy_dir = work / "publish-copy"
    shutil.rmtree(copy_dir, ignore_errors=True)
    copy_dir.mkdir(parents=True)
    copy = atlas.copy_to(copy_dir / "atlas.duckdb")
    gen = _gen_connection()
    runs = []
    try:
        for stack, la, lb in [(0, i, i + 3) for i in range(repeats) if i + 3 < shape.layers] or [(0, 0, 0)] * repeats:
            shard, stats = write_shard(gen, shape, stack, la, lb, "scale-publish", copy.dir / "staging")
            t0 = time.perf_counter()
            with copy.write() as w:
                t1 = time.perf_counter()
                w.replace_pair(sae_id(stack, la), sae_id(stack, lb), METHOD, shard, stats, "scale-publish")
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            runs.append({"job_s": t3 - t0, "open_s": t1 - t0, "write_s": t2 - t1, "publish_s": t3 - t2})
        return {**{k: float(np.median([r[k] for r in runs])) for k in runs[0]}, "runs": runs,
                "duckdb_file_mb": copy.path.stat().st_size / 2**20}
    finally:
        gen.close()
        shutil.rmtree(copy_dir, ignore_errors=True)


def disk(atlas) -> dict:
    """Bytes on disk per match row: the table files (forward, reverse), their edge indexes, the DuckDB file."""
    from atlas.store.edgeindex import index_name

    with atlas.read() as con:
        rows, = con.execute("SELECT sum(n_rows) FROM parts WHERE table_name = 'matches'").fetchone()
        files = con.execute("SELECT file, reverse_file FROM parts WHERE table_name = 'matches'").fetchall()
    fwd = sum((atlas.tables_dir / f).stat().st_size for f, _ in files)
    rev = sum((atlas.tables_dir / r).stat().st_size for _, r in files if r)
    idx = sum((atlas.tables_dir / index_name(f)).stat().st_size for f, _ in files
              if (atlas.tables_dir / index_name(f)).exists())
    db = atlas.path.stat().st_size
    return {"match_rows": int(rows), "table_files_gb": (fwd + rev) / 1e9, "reverse_files_gb": rev / 1e9,
            "bytes_per_row": (fwd + rev) / rows, "forward_bytes_per_row": fwd / rows,
            "index_gb": idx / 1e9, "index_bytes_per_row": idx / rows,
            "duckdb_file_mb": db / 2**20, "files": len(files) + sum(1 for _, r in files if r)}


# ---- SQL: the macros a SQL user calls, against the served path ------------------------------------------------

BEFORE_COMMIT = "a4ab3d6"
"""The commit whose lineage_edges macro (below) scanned every passing row of the stack's pair files."""
LINEAGE_EDGES_BEFORE = """
CREATE OR REPLACE TEMP MACRO lineage_edges_before(sae_, feature_, tau_ := 0.7, method_ := 'decoder_cos', max_skip_ := 1,
                                      edges_ := 'default') AS TABLE
WITH RECURSIVE
st AS (SELECT sae_id, layer, dense_rank() OVER (ORDER BY layer) AS pos FROM saes
       WHERE stack = (SELECT stack FROM saes WHERE sae_id = sae_)),
e AS (SELECT m.sae_a, m.feature_a, m.sae_b, m.feature_b, m.score, m.assigned,
             edge_kind(m.assigned, m.rank, m.rank_b) AS kind, b.pos - a.pos AS step
      FROM matches m JOIN st a ON a.sae_id = m.sae_a JOIN st b ON b.sae_id = m.sae_b
      WHERE m.method = method_ AND m.score >= tau_ AND b.pos > a.pos AND b.pos - a.pos <= 1 + max_skip_),
ok AS (SELECT * FROM e WHERE edges_ = 'all' OR (step = 1 AND kind <> 'candidate') OR kind = 'carry'),
fwd_e AS (SELECT * FROM ok WHERE NOT EXISTS (SELECT 1 FROM ok x WHERE x.sae_a = ok.sae_a AND x.feature_a = ok.feature_a
                                            AND x.step < ok.step)),
bwd_e AS (SELECT * FROM ok WHERE NOT EXISTS (SELECT 1 FROM ok x WHERE x.sae_b = ok.sae_b AND x.feature_b = ok.feature_b
                                            AND x.step < ok.step)),
fwd(sae_id, feature) AS (
    SELECT sae_, feature_
    UNION
    SELECT e.sae_b, e.feature_b FROM fwd JOIN fwd_e e ON e.sae_a = fwd.sae_id AND e.feature_a = fwd.feature),
bwd(sae_id, feature) AS (
    SELECT sae_, feature_
    UNION
    SELECT e.sae_a, e.feature_a FROM bwd JOIN bwd_e e ON e.sae_b = bwd.sae_id AND e.feature_b = bwd.feature),
out AS (SELECT e.* FROM fwd_e e JOIN fwd ON e.sae_a = fwd.sae_id AND e.feature_a = fwd.feature
        UNION
        SELECT e.* FROM bwd_e e JOIN bwd ON e.sae_b = bwd.sae_id AND e.feature_b = bwd.feature)
SELECT o.sae_a, o.feature_a, a.layer AS layer_a, o.sae_b, o.feature_b, b.layer AS layer_b, o.score,
       CASE WHEN o.step > 1 AND o.kind = 'carry' THEN 'gap' ELSE o.kind END AS kind, o.step - 1 AS gap
FROM out o JOIN st a ON a.sae_id = o.sae_a JOIN st b ON b.sae_id = o.sae_b
ORDER BY layer_a, o.feature_a, layer_b, o.feature_b;
"""


def measure_sql(atlas, n: int = 40, before: int = 10, seed: int = 3) -> dict:
    """p50 over `n` random features, on one read-only connection as a SQL user opens it: the served lineage
    (atlas.queries.lineage over the snapshot, what the server runs), the lineage_edges and
    lineage_nodes macros (their edges must equal it), the macro of BEFORE_COMMIT on `before` of them, and point
    lookups by (sae, feature) in matches and matches_by_b."""
    from atlas.queries.lineage import lineage

    picks = random_features(atlas.path, n, seed)
    times: dict[str, list[float]] = {}

    def clock(name, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    with atlas.read() as snap:
        con = snap.con  # one connection: the macro of BEFORE_COMMIT is temporary, its own
        con.execute(LINEAGE_EDGES_BEFORE)
        for s, f in picks[:3]:  # open the files and indexes once
            lineage(snap, s, f)
            con.execute("SELECT count(*) FROM lineage_edges(?, ?)", [s, f]).fetchall()
        same, edges = 0, []
        for s, f in picks:
            lin = clock("served_lineage", lambda: lineage(snap, s, f))
            rows = clock("lineage_edges", lambda: con.execute("SELECT sae_a, feature_a, sae_b, feature_b, kind "
                                                             "FROM lineage_edges(?, ?)", [s, f]).fetchall())
            clock("lineage_nodes", lambda: con.execute("SELECT * FROM lineage_nodes(?, ?)", [s, f]).fetchall())
            clock("point_matches", lambda: con.execute("SELECT * FROM matches WHERE sae_a = ? AND feature_a = ?",
                                                       [s, f]).fetchall())
            clock("point_matches_by_b", lambda: con.execute("SELECT * FROM matches_by_b WHERE sae_b = ? AND "
                                                            "feature_b = ?", [s, f]).fetchall())
            same += sorted(rows) == sorted((e.sae_a, e.feature_a, e.sae_b, e.feature_b, e.kind) for e in lin.edges)
            edges.append(len(rows))
        for s, f in picks[:before]:
            clock("lineage_edges_before", lambda: con.execute("SELECT count(*) FROM lineage_edges_before(?, ?)",
                                                              [s, f]).fetchall())
    out = {f"{k}_p50_ms": float(np.median(v)) * 1e3 for k, v in times.items()}
    out.update({"features": n, "before_features": before, "before_commit": BEFORE_COMMIT, "same_edges": same,
                "median_edges": float(np.median(edges)),
                "ratio": out["lineage_edges_p50_ms"] / out["served_lineage_p50_ms"],
                "ratio_before": out["lineage_edges_before_p50_ms"] / out["served_lineage_p50_ms"],
                "target": "lineage_edges <= 20x the served lineage"})
    return out


# ---- HTTP: the server as the README starts it, RSS from /proc ---------------------------------------------------

def rss(pid: int, fields: tuple[str, ...] = ("VmRSS",)) -> dict[str, float]:
    """/proc status `fields` (resident memory, kB there) summed over the process group of `pid` (the server
    runs in its own session: it and its workers), in MB."""
    total = dict.fromkeys(fields, 0)
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pid:
                for line in (d / "status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in total:
                        total[key] += int(value.split()[0])
    return {k: v / 1024 for k, v in total.items()}


def rss_kinds_mb(pid: int) -> dict:
    """Anonymous, file-backed and shared pages, MB: file-backed ones (mapped edge indexes, libraries) are the
    page cache's, shared between workers and reclaimable; anonymous ones are the heap."""
    return {k.removeprefix("Rss").lower() + "_mb": v for k, v in rss(pid, ("RssAnon", "RssFile", "RssShmem")).items()}


class Watchdog:
    """The peak RSS of a server's processes, sampled every 0.1 s; stops the server past `limit_mb`, so an atlas
    the server cannot hold fails its row instead of the machine."""

    def __init__(self, server, limit_mb: float):
        self.server, self.limit_mb, self.peak_mb, self.killed = server, limit_mb, 0.0, None
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        while not self._stop.wait(0.1):
            now = rss(self.server.proc.pid)["VmRSS"]
            self.peak_mb = max(self.peak_mb, now)
            if now > self.limit_mb and self.killed is None:
                self.killed = f"stopped by the bench at {now:.0f} MB RSS (limit {self.limit_mb:.0f} MB)"
                self.server.stop()

    def reset_peak(self) -> None:
        self.peak_mb = rss(self.server.proc.pid)["VmRSS"]

    def close(self) -> None:
        self._stop.set()


def random_features(path: Path, n: int, seed: int) -> list[tuple[str, int]]:
    """n random (sae, feature) over the whole atlas."""
    import duckdb

    with duckdb.connect(str(path), read_only=True) as con:
        saes = con.execute("SELECT sae_id, d_sae FROM saes ORDER BY sae_id").fetchall()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(saes), n)
    return [(saes[i][0], int(rng.integers(0, saes[i][1]))) for i in picks]


def card_and_lineage(base: str, picks: list[tuple[str, int]], seconds: float, client: str, log=print) -> dict:
    """The feature card and lineage of random `picks` under load (bench/load.py) at 2 and 8 connections, after
    4 first requests each, timed apart (they build whatever a snapshot caches, in both workers)."""
    import httpx

    from bench.load import http_load

    out: dict = {}
    paths = {"feature_card": [f"/api/saes/{s}/features/{f}" for s, f in picks],
             "lineage": [f"/api/saes/{s}/features/{f}/lineage" for s, f in picks]}
    for name, urls in paths.items():
        t0 = time.perf_counter()
        out[f"{name}_first_status"] = [httpx.get(base + u, timeout=300).status_code for u in urls[:4]]
        out[f"{name}_first_s"] = time.perf_counter() - t0
        log(f"  first {name} requests {out[f'{name}_first_status']} in {out[f'{name}_first_s']:.1f} s")
    for name, urls in paths.items():
        out[name] = {str(c): http_load(urls, base, seconds, c, client) for c in (2, 8)}
        log(f"  {name}: " + ", ".join(f"{c} conn p50 {v['p50_ms']:.1f} ms p99 {v['p99_ms']:.1f} ms "
                                      f"{v['req_per_s']:.0f} req/s" for c, v in out[name].items()))
    return out


def _export(base: str, watch: Watchdog, limit_s: float) -> dict:
    """GET /api/export/matches.parquet, read as it comes, with the server's RSS before and at its peak."""
    import httpx

    watch.reset_peak()
    before = watch.peak_mb
    t0 = time.perf_counter()
    first = None
    size, status, complete, error = 0, None, False, None
    try:
        with httpx.stream("GET", f"{base}/api/export/matches.parquet", timeout=httpx.Timeout(30, read=300)) as r:
            status = r.status_code
            for chunk in r.iter_bytes(1 << 20):
                first = first or time.perf_counter() - t0
                size += len(chunk)
                if time.perf_counter() - t0 > limit_s:
                    break
            else:
                complete = status == 200
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"[:200]
    wall = time.perf_counter() - t0
    return {"status": status, "complete": complete, "bytes": size, "seconds": wall, "mb_per_s": size / 2**20 / wall,
            "first_byte_s": first, "rss_before_mb": before, "peak_rss_mb": watch.peak_mb,
            "error": error or watch.killed, "time_limit_s": limit_s}


def measure_http(atlas_path: Path, args, log=print) -> dict:
    """Card and lineage under load, RSS after --lineage-requests random lineages, the export."""
    from bench.load import http_load
    from bench.server import serving

    out: dict = {"server": "atlas serve --workers 2", "rss_limit_mb": args.rss_limit_mb}
    watch = None
    t0 = time.perf_counter()
    try:
        with serving(atlas_path, "--workers", "2") as server:
            watch = Watchdog(server, args.rss_limit_mb)
            pid = server.proc.pid
            out["start_s"] = time.perf_counter() - t0
            out["rss_idle_mb"] = rss(pid)["VmRSS"]
            out["rss_idle_kinds"] = rss_kinds_mb(pid)
            out.update(card_and_lineage(server.base, random_features(atlas_path, 2000, 1), args.seconds,
                                        args.load_client, lambda line: log(f"scale: {line}")))
            lin = [f"/api/saes/{s}/features/{f}/lineage" for s, f in random_features(atlas_path, args.lineage_requests, 2)]
            out["lineage_random"] = http_load(lin, server.base, args.lineage_seconds, 4, once=True)
            out["rss_after_lineage_mb"] = rss(pid)["VmRSS"]
            out["rss_after_lineage_kinds"] = rss_kinds_mb(pid)
            out["peak_rss_mb"] = watch.peak_mb
            log(f"scale:   RSS after {out['lineage_random']['requests']} random lineages "
                f"({out['lineage_random']['req_per_s']:.0f} req/s): {out['rss_after_lineage_mb']:.0f} MB")
            out["export"] = e = _export(server.base, watch, args.export_seconds)
            log(f"scale:   export: status {e['status']}, {e['bytes'] / 2**20:.0f} MB in {e['seconds']:.1f} s, RSS "
                f"{e['rss_before_mb']:.0f} -> peak {e['peak_rss_mb']:.0f} MB" + (f" ({e['error']})" if e["error"] else ""))
    except Exception as e:  # noqa: BLE001 -- a server that cannot serve the atlas gets its failure recorded
        out["error"] = (watch and watch.killed) or f"{type(e).__name__}: {e}"[:500]
        log(f"scale:   HTTP stopped: {out['error']}")
    finally:
        if watch:
            watch.close()
    return out


# ---- the section ------------------------------------------------------------------------------------------

def run(args, log=print) -> dict:
    """Everything above at --rows and --small-rows."""
    big = Shape(args.rows, args.scale_d_sae, args.scale_layers)
    small = Shape(args.small_rows or max(big.per_pair, args.rows // 10), args.scale_d_sae, args.scale_layers)
    scale_dir = Path(args.scale_dir)
    scale_dir.mkdir(parents=True, exist_ok=True)
    log(f"scale: {shutil.disk_usage(scale_dir).free / 1e9:.0f} GB free under {scale_dir}")
    t_start = time.perf_counter()
    out: dict = {"k": K, "method": METHOD, "scale_dir": str(scale_dir)}
    for name, shape in (("small", small), ("big", big)):
        atlas, info = generate(shape, scale_dir / f"new-{shape.key}", log)
        res = {"shape": asdict(shape), "match_rows": shape.match_rows, "pairs": shape.n_pairs,
               "saes": shape.stacks * shape.layers, "generate": info, "disk": disk(atlas)}
        log(f"scale: {name}: {res['disk']['bytes_per_row']:.2f} bytes per match row, DuckDB file "
            f"{res['disk']['duckdb_file_mb']:.0f} MB")
        with atlas.write():  # an atlas cached by older code: the current views and macros (a job's migration)
            pass
        res["publish"] = publish(atlas, shape, scale_dir)
        log(f"scale: {name}: a job adding one pair-method: {res['publish']['job_s']:.2f} s (publish "
            f"{res['publish']['publish_s']:.2f} s)")
        res["sql"] = q = measure_sql(atlas)
        log(f"scale: {name}: lineage_edges p50 {q['lineage_edges_p50_ms']:.0f} ms = {q['ratio']:.1f}x the served "
            f"lineage ({q['served_lineage_p50_ms']:.1f} ms; the macro of {BEFORE_COMMIT}: {q['ratio_before']:.0f}x); "
            f"same edges {q['same_edges']}/{q['features']}")
        if args.http and (name == "big" or args.http_small):
            log(f"scale: {name}: HTTP on {shape.match_rows:,} rows")
            res["http"] = measure_http(atlas.path, args, log)
        out[name] = res
    out["runtime_min"] = (time.perf_counter() - t_start) / 60
    out["target"] = ("publish <= 1 s at both sizes; p50 < 10 ms, p99 < 50 ms, >= 500 req/s; RSS <= 2 GB after "
                     "10k lineages; export with flat memory")
    return out


def add_arguments(p) -> None:
    g = p.add_argument_group("scale section")
    g.add_argument("--rows", type=int, default=300_000_000, help="Match rows of the big synthetic atlas (>= 300M).")
    g.add_argument("--small-rows", type=int, default=None, help="Match rows of the second size (default rows / 10).")
    g.add_argument("--scale-d-sae", type=int, default=16384, help="Features per SAE of the scale atlas.")
    g.add_argument("--scale-layers", type=int, default=26, help="Layers per stack of the scale atlas.")
    g.add_argument("--scale-dir", type=Path, default=Path(tempfile.gettempdir()) / "scale",
                   help="Where the generated atlases are kept between runs (keyed by size).")
    g.add_argument("--seconds", type=int, default=10, help="Seconds of each load run (wrk or the Python client).")
    g.add_argument("--lineage-requests", type=int, default=10_000, help="Random lineages before the RSS reading.")
    g.add_argument("--lineage-seconds", type=float, default=180,
                   help="Stop the random lineages after this long (the JSON says how many were done).")
    g.add_argument("--export-seconds", type=float, default=240, help="Stop reading the export after this long.")
    g.add_argument("--rss-limit-mb", type=float, default=8000, help="Stop a server whose processes pass this RSS.")
    g.add_argument("--no-http", dest="http", action="store_false", help="Skip the HTTP measurements.")
    g.add_argument("--no-http-small", dest="http_small", action="store_false", help="Skip HTTP on the small atlas.")

