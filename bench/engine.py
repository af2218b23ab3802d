"""Which engine holds the big tables (docs/storage.md): DuckDB views over a manifest of Parquet files, or
DuckLake, measured side by side on the same synthetic `matches`.

    python -m bench.engine --engine manifest|ducklake [--sizes 40,400] [--out FILE.json]

DuckLake's extension exists offline only for duckdb 1.4.4 / 1.5.5 (PyPI), so `--engine ducklake` runs under
another interpreter (`make bench-engine` makes that venv). Hence this file uses only the standard library,
duckdb, pyarrow and numpy, and writes its own provenance (no atlas/, no bench.record).

Per size it reports: the publish time of one new pair-method, point-lookup latency (SQL, and for the manifest
also the server's direct path: the catalog names one file, row groups pruned by feature_a statistics), bytes
on disk per match row; once: whether a plain or a locked-down read-only connection (and the `duckdb` CLI)
sees `matches`, and whether a reader keeps its snapshot across a commit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("decoder_cos", "encoder_cos", "activation_corr", "decoder_mse")
ROW_GROUP = 4096  # as atlas.store.parts.ROW_GROUP: 256 features at k = 16
SCHEMA = pa.schema([
    pa.field("sae_a", pa.string(), False), pa.field("feature_a", pa.int32(), False),
    pa.field("sae_b", pa.string(), False), pa.field("feature_b", pa.int32(), False),
    pa.field("method", pa.string(), False), pa.field("score", pa.float32(), False),
    pa.field("rank", pa.int16(), False), pa.field("assigned", pa.bool_(), False),
    pa.field("run_id", pa.string(), False), pa.field("rank_b", pa.int16()),
])
DDL = """(sae_a VARCHAR NOT NULL, feature_a INTEGER NOT NULL, sae_b VARCHAR NOT NULL, feature_b INTEGER NOT NULL,
    method VARCHAR NOT NULL, score FLOAT NOT NULL, rank SMALLINT NOT NULL, assigned BOOLEAN NOT NULL,
    run_id VARCHAR NOT NULL, rank_b SMALLINT)"""
LOOKUP = "WHERE sae_a = ? AND sae_b = ? AND method = ? AND feature_a = ? ORDER BY rank"
H, H2, M = 2654435761, 0x45D9F3B, 2**32


def mix_sql(c: int) -> str:
    """A 32-bit integer hash of row number i (multiply, xor-shift, multiply, xor-shift) in SQL: partners and
    scores that compress like random ones (a plain multiplicative hash is a lattice that delta coding sees
    through), yet are a formula a test can recompute (mix())."""
    x1 = f"((i * {H} + {c}) % {M})"
    x2 = f"((xor({x1}, {x1} >> 15) * {H2}) % {M})"
    return f"xor({x2}, {x2} >> 13)"


def mix(i: int, c: int) -> int:
    x = (i * H + c) % M
    x = ((x ^ (x >> 15)) * H2) % M
    return x ^ (x >> 13)


# ---- the synthetic data: one formula, so a test can recompute any row ----

def key(pm: int) -> tuple[str, str, str]:
    """(sae_a, sae_b, method) of pair-method number `pm`: four methods per pair of adjacent layers."""
    pair, m = divmod(pm, len(METHODS))
    return f"gemmascope-2b-res-16k/layer_{pair}", f"gemmascope-2b-res-16k/layer_{pair + 1}", METHODS[m]


def rows_sql(pm: int, features: int, k: int) -> str:
    """`features` × `k` match rows of pair-method `pm`, sorted by (feature_a, rank) (range() order)."""
    a, b, m = key(pm)
    return f"""SELECT '{a}' AS sae_a, (i // {k})::INTEGER AS feature_a, '{b}' AS sae_b,
        ({mix_sql(pm * 7)} * {features} // {M})::INTEGER AS feature_b, '{m}' AS method,
        (0.9::DOUBLE - 0.04::DOUBLE * (i % {k}) + 0.03::DOUBLE * {mix_sql(pm * 97 + 1)} / {M}.0::DOUBLE)::FLOAT AS score,
        (i % {k} + 1)::SMALLINT AS rank, (i % {k} = 0) AS assigned, 'run-{pm:08d}' AS run_id,
        (1 + {mix_sql(pm * 13 + 2)} * {k} // {M})::SMALLINT AS rank_b
    FROM range({features * k}) r(i)"""


def expected(pm: int, feature_a: int, features: int, k: int) -> dict[str, list]:
    """The rows rows_sql() gives for one feature_a, computed in Python (the planted truth)."""
    i = [feature_a * k + r for r in range(k)]
    return {"feature_b": [mix(j, pm * 7) * features // M for j in i],
            "score": [float(np.float32(0.9 - 0.04 * (j % k) + 0.03 * mix(j, pm * 97 + 1) / M)) for j in i],
            "rank": [j % k + 1 for j in i], "assigned": [j % k == 0 for j in i],
            "rank_b": [1 + mix(j, pm * 13 + 2) * k // M for j in i],
            "run_id": [f"run-{pm:08d}"] * k}


def arrow_rows(pm: int, features: int, k: int) -> pa.Table:
    con = duckdb.connect()
    try:
        return pa.Table.from_arrays(con.sql(rows_sql(pm, features, k)).to_arrow_table().columns, schema=SCHEMA)
    finally:
        con.close()


def write_parquet(pm: int, path: Path, features: int, k: int) -> int:
    """One pair-method's table file as the store writes it (pyarrow, ROW_GROUP rows, zstd, statistics)."""
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(arrow_rows(pm, features, k), tmp, row_group_size=ROW_GROUP, compression="zstd",
                   write_statistics=True)
    os.replace(tmp, path)
    return path.stat().st_size


def q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def pct(samples: list[float]) -> dict:
    ms = np.asarray(samples) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(samples)}


BUDGET_S = 15.0
"""Seconds of lookups per path and size: a path that costs seconds per query stops early (its n says so)."""


def timed_lookups(fn, lookups) -> tuple[dict, list]:
    times, results = [], []
    for pm, fa in lookups:
        t0 = time.perf_counter()
        out = fn(pm, fa)
        times.append(time.perf_counter() - t0)
        results.append(out)
        if sum(times) > BUDGET_S:
            break
    return pct(times), results


def correct(results, lookups, features, k) -> bool:
    """Every lookup returned exactly the k planted rows, in rank order."""
    return len(results) > 0 and all(r == expected(pm, fa, features, k)["feature_b"]
                                     for r, (pm, fa) in zip(results, lookups))


def run_py(code: str, cwd: str = "/") -> dict:
    """Run `code` in a fresh interpreter (a fresh DuckDB instance, another working directory)."""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)
    err = p.stderr.strip().splitlines()
    return {"ok": p.returncode == 0, "out": p.stdout.strip() if p.returncode == 0 else
            next((ln for ln in reversed(err) if "Error" in ln), err[-1] if err else "")[:300]}


def find_cli() -> str | None:
    """The duckdb CLI: $DUCKDB_CLI, the PATH, or next to this interpreter (pip install duckdb-cli)."""
    for c in (os.environ.get("DUCKDB_CLI"), shutil.which("duckdb"), str(Path(sys.executable).with_name("duckdb"))):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def run_cli(args: list[str]) -> dict:
    cli = find_cli()
    if cli is None:
        return {"ok": None, "out": "no duckdb CLI (set DUCKDB_CLI or pip install duckdb-cli)"}
    p = subprocess.run([cli, "-csv", "-noheader", *args], capture_output=True, text=True, cwd="/", timeout=120)
    lines = (p.stdout + p.stderr).strip().splitlines()
    return {"ok": p.returncode == 0 and "Error" not in p.stdout + p.stderr,
            "out": next((ln for ln in lines if "Error" in ln), lines[-1] if lines else "")[:300]}


def dir_bytes(path: Path, suffix: str = "") -> int:
    return sum(p.stat().st_size for p in path.rglob(f"*{suffix}") if p.is_file())


# ---- engine 1: DuckDB views over a manifest (catalog table `parts`) of Parquet files ----

class Manifest:
    """atlas.duckdb holds `parts` and small tables; atlas.files/tables/matches/<uuid>.parquet the matches;
    `matches` is a view over read_parquet([absolute paths]); publish swaps a copy of the small file in."""

    name = "manifest"

    def __init__(self, root: Path, features: int, k: int, storage_version: str):
        self.root, self.features, self.k, self.storage = root, features, k, storage_version
        self.atlas = root / "atlas.duckdb"
        self.tables = root / "atlas.files" / "tables"
        (self.tables / "matches").mkdir(parents=True, exist_ok=True)
        self.n_saes = 0

    def version(self) -> str:
        return duckdb.__version__

    def create(self) -> None:
        con = duckdb.connect(str(self.atlas), config={"storage_compatibility_version": self.storage})
        con.execute("CREATE TABLE parts (table_name VARCHAR, sae_a VARCHAR, sae_b VARCHAR, method VARCHAR, "
                    "file VARCHAR, reverse_file VARCHAR, n_rows BIGINT, bytes BIGINT, run_id VARCHAR, "
                    "created_at TIMESTAMP, PRIMARY KEY (table_name, sae_a, sae_b, method))")
        con.execute("CREATE TABLE features (sae_id VARCHAR, feature INTEGER, density FLOAT, max_act FLOAT)")
        con.execute("CREATE SCHEMA empty")
        con.execute(f"CREATE TABLE empty.matches {DDL}")
        self._view(con)
        con.close()

    def _add_saes(self, con, n_pm: int) -> None:
        """The small tables grow with SAEs (features rows), so the copied file is not unrealistically empty."""
        want = key(n_pm - 1)[0:2]
        n = int(want[1].rsplit("_", 1)[1]) + 1
        for s in range(self.n_saes, n):
            con.execute(f"INSERT INTO features SELECT 'gemmascope-2b-res-16k/layer_{s}', range::INTEGER, "
                        f"random()::FLOAT, (10 * random())::FLOAT FROM range({self.features})")
        self.n_saes = max(self.n_saes, n)

    def _view(self, con) -> None:
        files = [str(self.tables / f) for (f,) in con.execute("SELECT file FROM parts ORDER BY file").fetchall()]
        body = (f"SELECT * FROM read_parquet([{', '.join(map(q, files))}])" if files else "SELECT * FROM empty.matches")
        con.execute(f"CREATE OR REPLACE VIEW matches AS {body}")

    def _file(self, pm: int) -> tuple[str, int]:
        rel = f"matches/{uuid.uuid4().hex}.parquet"
        return rel, write_parquet(pm, self.tables / rel, self.features, self.k)

    def _catalog_row(self, con, pm: int, rel: str, size: int) -> None:
        a, b, m = key(pm)
        con.execute("INSERT INTO parts VALUES ('matches', ?, ?, ?, ?, NULL, ?, ?, ?, now())",
                    [a, b, m, rel, self.features * self.k, size, f"run-{pm:08d}"])

    def build(self, start: int, stop: int) -> None:
        written = [(pm, *self._file(pm)) for pm in range(start, stop)]
        con = duckdb.connect(str(self.atlas))
        for pm, rel, size in written:
            self._catalog_row(con, pm, rel, size)
        self._add_saes(con, stop)
        self._view(con)
        con.close()

    def publish(self, pm: int) -> dict:
        """Write the file, then: copy the small DuckDB file, add the catalog row, rewrite the view, swap."""
        t0 = time.perf_counter()
        rel, size = self._file(pm)
        t1 = time.perf_counter()
        work = self.atlas.with_name(self.atlas.name + ".work")
        shutil.copyfile(self.atlas, work)
        con = duckdb.connect(str(work))
        self._catalog_row(con, pm, rel, size)
        self._view(con)
        con.close()  # checkpoints and fsyncs the file
        os.replace(work, self.atlas)
        t2 = time.perf_counter()
        return {"write_s": t1 - t0, "commit_s": t2 - t1}

    def publish_variants(self, pms: list[int]) -> dict:
        runs = [self.publish(pm) for pm in pms]
        return {"catalog_swap": {"write_file_s": statistics.median(r["write_s"] for r in runs),
                                 "commit_s": statistics.median(r["commit_s"] for r in runs),
                                 "total_s": statistics.median(r["write_s"] + r["commit_s"] for r in runs),
                                 "repeats": len(runs)}}

    def counts(self) -> tuple[int, int]:
        con = self._reader()
        rows, files = con.execute("SELECT sum(n_rows), count(*) FROM parts").fetchone()
        con.close()
        return int(rows), int(files)

    def _reader(self, **config):
        """A fresh instance on the published file (ATTACH: DuckDB's per-path instance cache is bypassed)."""
        con = duckdb.connect(config=config)
        con.execute(f"ATTACH {q(self.atlas)} AS atlas (READ_ONLY)")
        con.execute("USE atlas")
        return con

    def lookups(self, lookups: list[tuple[int, int]]) -> dict:
        out = {}
        t0 = time.perf_counter()
        con = self._reader()
        files = [str(self.tables / f) for (f,) in con.execute("SELECT file FROM parts").fetchall()]
        con.execute(f"CREATE OR REPLACE TEMP VIEW matches AS SELECT * FROM read_parquet([{', '.join(map(q, files))}])")
        out["reader_open_s"] = round(time.perf_counter() - t0, 4)  # what a server snapshot open costs
        for cache in (False, True):
            con.execute(f"SET parquet_metadata_cache = {str(cache).lower()}")
            name = "sql_view" + ("_metadata_cache" if cache else "")
            for p in ("cold", "warm"):
                out[f"{name}_{p}"], res = timed_lookups(
                    lambda pm, fa: [r[0] for r in con.execute(f"SELECT feature_b FROM matches {LOOKUP}",
                                                              [*key(pm), fa]).fetchall()], lookups)
                out[f"{name}_{p}"]["correct"] = correct(res, lookups, self.features, self.k)

        def via_catalog(pm, fa):
            (file,) = con.execute("SELECT file FROM parts WHERE table_name = 'matches' AND sae_a = ? AND sae_b = ? "
                                  "AND method = ?", list(key(pm))).fetchone()
            return [r[0] for r in con.execute("SELECT feature_b FROM read_parquet(?) WHERE feature_a = ? ORDER BY rank",
                                              [str(self.tables / file), fa]).fetchall()]
        con.execute("SET parquet_metadata_cache = false")
        out["sql_catalog_one_file"], res = timed_lookups(via_catalog, lookups)
        out["sql_catalog_one_file"]["correct"] = correct(res, lookups, self.features, self.k)

        # the same files under hive-style folders (hard links): the view prunes files by path, unopened
        hive = []
        for a, b, m, file in con.execute("SELECT sae_a, sae_b, method, file FROM parts").fetchall():
            folder = self.root / "hive" / "/".join(f"{c}={quote(v, safe='')}" for c, v in
                                                   (("sae_a", a), ("sae_b", b), ("method", m)))
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / Path(file).name
            if not link.exists():
                os.link(self.tables / file, link)
            hive.append(str(link))
        con.execute(f"CREATE OR REPLACE TEMP VIEW matches_hive AS SELECT * FROM read_parquet([{', '.join(map(q, hive))}], "
                    "hive_partitioning = true)")
        for p in ("cold", "warm"):
            out[f"sql_view_hive_{p}"], res = timed_lookups(
                lambda pm, fa: [r[0] for r in con.execute(f"SELECT feature_b FROM matches_hive {LOOKUP}",
                                                          [*key(pm), fa]).fetchall()], lookups)
            out[f"sql_view_hive_{p}"]["correct"] = correct(res, lookups, self.features, self.k)

        catalog = {tuple(r[:3]): r[3] for r in con.execute("SELECT sae_a, sae_b, method, file FROM parts").fetchall()}
        con.close()
        direct = DirectReader(self.tables, catalog)
        for p in ("cold", "warm"):
            out[f"direct_pyarrow_{p}"], res = timed_lookups(
                lambda pm, fa: direct.rows(key(pm), fa).column("feature_b").to_pylist(), lookups)
            out[f"direct_pyarrow_{p}"]["correct"] = correct(res, lookups, self.features, self.k)
        return out

    def writers(self, pm: int) -> dict:
        """Bytes per row of one pair-method's file by writer: what the store writes (pyarrow defaults), pyarrow
        with dictionaries only on the strings, BYTE_STREAM_SPLIT floats and delta-packed ints, and DuckDB's COPY."""
        t, path = arrow_rows(pm, self.features, self.k), self.root / "writer.parquet"
        ints = ("feature_a", "feature_b", "rank", "rank_b")
        out = {}
        for name, kw in (("pyarrow_default", {}),
                         ("pyarrow_tuned", {"use_dictionary": ["sae_a", "sae_b", "method", "run_id"],
                                            "column_encoding": {"score": "BYTE_STREAM_SPLIT",
                                                                **dict.fromkeys(ints, "DELTA_BINARY_PACKED")}})):
            pq.write_table(t, path, row_group_size=ROW_GROUP, compression="zstd", write_statistics=True, **kw)
            out[name] = round(path.stat().st_size / t.num_rows, 3)
        con = duckdb.connect()
        con.execute(f"COPY ({rows_sql(pm, self.features, self.k)}) TO {q(path)} "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP})")
        con.close()
        out["duckdb_copy"] = round(path.stat().st_size / t.num_rows, 3)
        path.unlink()
        return out

    def planted(self, pm: int, fa: int) -> dict:
        con = self._reader()
        sql = con.execute(f"SELECT feature_b, score, rank, assigned, rank_b, run_id FROM matches {LOOKUP}",
                          [*key(pm), fa]).fetchall()
        catalog = {tuple(r[:3]): r[3] for r in con.execute("SELECT sae_a, sae_b, method, file FROM parts").fetchall()}
        con.close()
        t = DirectReader(self.tables, catalog).rows(key(pm), fa)
        direct = list(zip(*(t.column(c).to_pylist() for c in ("feature_b", "score", "rank", "assigned", "rank_b", "run_id"))))
        return {"sql": [list(r) for r in sql], "direct": [list(r) for r in direct]}

    def disk(self, rows: int) -> dict:
        data = dir_bytes(self.tables / "matches", ".parquet")
        small = self.atlas.stat().st_size
        return {"match_files_bytes": data, "catalog_file_bytes": small, "bytes_per_row": round(data / rows, 3),
                "bytes_per_row_with_catalog": round((data + small) / rows, 3)}

    def access(self) -> dict:
        """Plain read-only connections (any cwd), the CLI, and the locked-down reader."""
        atlas, tables = str(self.atlas), str(self.tables) + os.sep
        count = "SELECT count(*) FROM matches"
        out = {"plain_python_readonly": run_py(
            f"import duckdb; print(duckdb.connect({atlas!r}, read_only=True).execute({count!r}).fetchone()[0])")}
        out["locked_down"] = run_py(f"""
import duckdb
con = duckdb.connect({atlas!r}, read_only=True, config={{'autoload_known_extensions': False, 'autoinstall_known_extensions': False}})
con.execute("SET allowed_directories = [{q(tables)}]")
con.execute("SET enable_external_access = false")
con.execute("SET lock_configuration = true")
n = con.execute({count!r}).fetchone()[0]
try:
    con.execute("SELECT * FROM read_csv('/etc/hostname')").fetchall(); outside = 'READ'
except Exception as e:
    outside = 'refused'
print(n, 'outside:', outside)""")
        out["cli_readonly"] = run_cli(["-readonly", atlas, "-c", count])
        # the same with a file in the default (latest) storage format of this duckdb
        plain = self.root / "default-storage.duckdb"
        con = duckdb.connect(str(plain))
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
        con.close()
        out["cli_readonly_default_storage_file"] = run_cli(["-readonly", str(plain), "-c", "SELECT x FROM t"])
        plain.unlink()
        return out

    def snapshot(self, pm: int) -> dict:
        """A reader opened before a publish keeps its snapshot; a new reader sees the new one; a reader in another
        process reads while a job holds its working copy open."""
        rows_before = self.counts()[0]
        old = self._reader()
        before = old.execute("SELECT count(*) FROM matches").fetchone()[0]
        same_path = duckdb.connect(str(self.atlas), read_only=True)  # the per-path instance cache, on purpose
        work = self.atlas.with_name(self.atlas.name + ".held")
        shutil.copyfile(self.atlas, work)
        job = duckdb.connect(str(work))  # a job in the middle of its work
        other = run_py(f"import duckdb; print(duckdb.connect({str(self.atlas)!r}, read_only=True)"
                       f".execute('SELECT count(*) FROM matches').fetchone()[0])")
        job.close()
        work.unlink()
        self.publish(pm)
        kept = old.execute("SELECT count(*) FROM matches").fetchone()[0]
        new = self._reader()
        seen = new.execute("SELECT count(*) FROM matches").fetchone()[0]
        reconnect = duckdb.connect(str(self.atlas), read_only=True).execute("SELECT count(*) FROM matches").fetchone()[0]
        for c in (old, new, same_path):
            c.close()
        return {"old_reader_keeps_snapshot": before == kept == rows_before,
                "new_reader_sees_commit": seen == rows_before + self.features * self.k,
                "other_process_reads_while_job_writes": other,
                "same_process_reconnect_by_path_sees_commit": reconnect == seen,
                "time_travel": "no: a snapshot is the catalog file it opened (keeping old catalog files would give it)"}


class DirectReader:
    """The server's path: the catalog names one file; row groups pruned by feature_a min/max; files cached."""

    def __init__(self, tables: Path, catalog: dict):
        self.tables, self.catalog, self.open = tables, catalog, {}

    def _file(self, file: str):
        if file not in self.open:
            pf = pq.ParquetFile(self.tables / file)
            md, col = pf.metadata, pf.schema_arrow.get_field_index("feature_a")
            stats = [md.row_group(i).column(col).statistics for i in range(md.num_row_groups)]
            self.open[file] = (pf, np.array([s.min for s in stats]), np.array([s.max for s in stats]))
        return self.open[file]

    def rows(self, k: tuple[str, str, str], fa: int) -> pa.Table:
        pf, lo, hi = self._file(self.catalog[k])
        t = pf.read_row_groups(np.flatnonzero((lo <= fa) & (hi >= fa)).tolist(), use_threads=False)
        return t.filter(pc.equal(t.column("feature_a"), fa))


# ---- engine 2: DuckLake (DuckDB-file catalog, Parquet data files) ----

def ducklake_extension() -> str:
    """The extension file from the PyPI packages (no network: LOAD by path)."""
    if os.environ.get("DUCKLAKE_EXTENSION"):
        return os.environ["DUCKLAKE_EXTENSION"]
    for mod in ("duckdb_extension_ducklake", "duckdb_ext"):
        with contextlib.suppress(ImportError):
            base = Path(__import__(mod).__file__).parent
            for p in base.rglob("ducklake.duckdb_extension"):
                if f"v{duckdb.__version__}" in str(p):
                    return str(p)
    raise SystemExit(f"error: no ducklake extension for duckdb {duckdb.__version__}: pip install "
                     f"duckdb-extension-ducklake=={duckdb.__version__} (or set DUCKLAKE_EXTENSION)")


class DuckLake:
    """atlas.ducklake is the DuckLake catalog (a DuckDB file); atlas.files/ the Parquet data files."""

    name = "ducklake"

    def __init__(self, root: Path, features: int, k: int, storage_version: str):
        self.root, self.features, self.k = root, features, k
        self.meta, self.data = root / "atlas.ducklake", root / "atlas.files"
        self.ext = ducklake_extension()
        self.con = None

    def version(self) -> str:
        return duckdb.__version__

    def _attach_sql(self, read_only: bool = False) -> str:
        return (f"ATTACH {q('ducklake:' + str(self.meta))} AS lake (DATA_PATH {q(str(self.data) + os.sep)}"
                f"{', READ_ONLY' if read_only else ''})")

    def connect(self, read_only: bool = False):
        con = duckdb.connect()
        con.execute(f"LOAD {q(self.ext)}")
        con.execute(self._attach_sql(read_only))
        return con

    def writer(self):
        if self.con is None:
            self.con = self.connect()
        return self.con

    def close(self):
        if self.con is not None:
            self.con.close()
            self.con = None

    def create(self) -> None:
        con = self.writer()
        con.execute(f"CALL lake.set_option('parquet_row_group_size', {ROW_GROUP})")
        con.execute("CALL lake.set_option('parquet_compression', 'zstd')")
        con.execute(f"CREATE TABLE lake.matches {DDL}")
        con.execute("CREATE TABLE lake.features (sae_id VARCHAR, feature INTEGER, density FLOAT, max_act FLOAT)")
        self.n_saes = 0

    def build(self, start: int, stop: int) -> None:
        con = self.writer()
        for pm in range(start, stop):
            con.execute(f"INSERT INTO lake.matches {rows_sql(pm, self.features, self.k)}")
        n = int(key(stop - 1)[1].rsplit("_", 1)[1]) + 1
        for s in range(self.n_saes, n):
            con.execute(f"INSERT INTO lake.features SELECT 'gemmascope-2b-res-16k/layer_{s}', range::INTEGER, "
                        f"random()::FLOAT, (10 * random())::FLOAT FROM range({self.features})")
        self.n_saes = max(self.n_saes, n)

    def publish_insert(self, pm: int) -> dict:
        t0 = time.perf_counter()
        self.writer().execute(f"INSERT INTO lake.matches {rows_sql(pm, self.features, self.k)}")
        return {"write_s": 0.0, "commit_s": time.perf_counter() - t0}

    def publish_add(self, pm: int) -> dict:
        """The store's own file (as the manifest writes it), then ducklake_add_data_files registers it."""
        t0 = time.perf_counter()
        path = self.data / "adopted" / f"{uuid.uuid4().hex}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(pm, path, self.features, self.k)
        t1 = time.perf_counter()
        self.writer().execute("CALL ducklake_add_data_files('lake', 'matches', ?)", [str(path)])
        return {"write_s": t1 - t0, "commit_s": time.perf_counter() - t1}

    def publish(self, pm: int) -> dict:
        return self.publish_insert(pm)

    def publish_variants(self, pms: list[int]) -> dict:
        out = {}
        half = len(pms) // 2
        for name, fn, part in (("insert", self.publish_insert, pms[:half]), ("add_data_files", self.publish_add, pms[half:])):
            runs = [fn(pm) for pm in part]
            out[name] = {"write_file_s": statistics.median(r["write_s"] for r in runs),
                         "commit_s": statistics.median(r["commit_s"] for r in runs),
                         "total_s": statistics.median(r["write_s"] + r["commit_s"] for r in runs), "repeats": len(runs)}
        return out

    def counts(self) -> tuple[int, int]:
        con = self.writer()
        rows = con.execute("SELECT count(*) FROM lake.matches").fetchone()[0]
        files = len(con.execute("SELECT data_file FROM ducklake_list_files('lake', 'matches')").fetchall())
        return int(rows), int(files)

    def lookups(self, lookups: list[tuple[int, int]]) -> dict:
        self.close()  # the server: a read-only attach of its own (the writer's lock would refuse it)
        t0 = time.perf_counter()
        con = self.connect(read_only=True)
        out = {"reader_open_s": round(time.perf_counter() - t0, 4)}
        for p in ("cold", "warm"):
            out[f"sql_{p}"], res = timed_lookups(
                lambda pm, fa: [r[0] for r in con.execute(f"SELECT feature_b FROM lake.matches {LOOKUP}",
                                                          [*key(pm), fa]).fetchall()], lookups)
            out[f"sql_{p}"]["correct"] = correct(res, lookups, self.features, self.k)
        con.close()
        return out

    def planted(self, pm: int, fa: int) -> dict:
        con = self.writer()
        rows = con.execute(f"SELECT feature_b, score, rank, assigned, rank_b, run_id FROM lake.matches {LOOKUP}",
                           [*key(pm), fa]).fetchall()
        return {"sql": [list(r) for r in rows]}

    def disk(self, rows: int) -> dict:
        files = [Path(f) for (f,) in self.writer().execute(
            "SELECT data_file FROM ducklake_list_files('lake', 'matches')").fetchall()]
        data = sum(f.stat().st_size for f in files)
        self.close()  # checkpoint the catalog file before measuring it
        meta = sum(p.stat().st_size for p in self.root.glob("atlas.ducklake*"))
        inserted = [f for f in files if "adopted" not in f.parts]
        groups = pq.ParquetFile(inserted[0]).metadata.num_row_groups if inserted else 0
        return {"match_files_bytes": data, "catalog_file_bytes": meta,
                "bytes_per_row": round(data / rows, 3), "bytes_per_row_with_catalog": round((data + meta) / rows, 3),
                "inserted_file_row_groups": groups}

    def access(self) -> dict:
        self.close()
        meta, data, ext = str(self.meta), str(self.data) + os.sep, self.ext
        out = {"plain_python_readonly": run_py(
            f"import duckdb; print(duckdb.connect({meta!r}, read_only=True).execute('SELECT count(*) FROM matches')"
            f".fetchone()[0])")}
        out["python_with_extension_readonly"] = run_py(f"""
import duckdb
con = duckdb.connect(); con.execute("LOAD {q(ext)}"); con.execute({self._attach_sql(True)!r})
print(con.execute('SELECT count(*) FROM lake.matches').fetchone()[0])""")
        out["locked_down"] = run_py(f"""
import duckdb
con = duckdb.connect(config={{'autoload_known_extensions': False, 'autoinstall_known_extensions': False}})
con.execute("LOAD {q(ext)}"); con.execute({self._attach_sql(True)!r})
con.execute("SET allowed_directories = [{q(data)}]")
con.execute("SET enable_external_access = false")
con.execute("SET lock_configuration = true")
n = con.execute('SELECT count(*) FROM lake.matches').fetchone()[0]
try:
    con.execute("SELECT * FROM read_csv('/etc/hostname')").fetchall(); outside = 'READ'
except Exception as e:
    outside = 'refused'
print(n, 'outside:', outside)""")
        out["locked_down_attach_after_lockdown"] = run_py(f"""
import duckdb
con = duckdb.connect(config={{'autoload_known_extensions': False, 'autoinstall_known_extensions': False}})
con.execute("LOAD {q(ext)}")
con.execute("SET allowed_directories = [{q(data)}, {q(meta)}]")
con.execute("SET enable_external_access = false")
con.execute({self._attach_sql(True)!r})
print(con.execute('SELECT count(*) FROM lake.matches').fetchone()[0])""")
        out["cli_readonly"] = run_cli(["-readonly", meta, "-c", "SELECT count(*) FROM matches"])
        out["cli_load_extension"] = run_cli(["-c", f"LOAD {q(ext)}; {self._attach_sql(True)}; "
                                                   "SELECT count(*) FROM lake.matches"])
        return out

    def snapshot(self, pm: int) -> dict:
        con = self.writer()
        rows_before = con.execute("SELECT count(*) FROM lake.matches").fetchone()[0]
        version = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()[0]
        reader = con.cursor()
        reader.execute("BEGIN TRANSACTION")
        before = reader.execute("SELECT count(*) FROM lake.matches").fetchone()[0]
        other = run_py(f"""
import duckdb
con = duckdb.connect(); con.execute("LOAD {q(self.ext)}"); con.execute({self._attach_sql(True)!r})
print(con.execute('SELECT count(*) FROM lake.matches').fetchone()[0])""")
        self.publish_insert(pm)
        kept = reader.execute("SELECT count(*) FROM lake.matches").fetchone()[0]
        reader.execute("COMMIT")
        seen = reader.execute("SELECT count(*) FROM lake.matches").fetchone()[0]
        travel = con.execute(f"SELECT count(*) FROM lake.matches AT (VERSION => {version})").fetchone()[0]
        reader.close()
        return {"old_reader_keeps_snapshot": before == kept == rows_before,
                "new_reader_sees_commit": seen == rows_before + self.features * self.k,
                "other_process_reads_while_job_writes": other,
                "time_travel": travel == rows_before}


ENGINES = {"manifest": Manifest, "ducklake": DuckLake}


# ---- provenance (bench.record's fields, without importing it) ----

def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(engine) -> dict:
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    cores = os.cpu_count()
    with contextlib.suppress(AttributeError):
        cores = len(os.sched_getaffinity(0))
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "host": {"cpu": cpu, "cores": cores, "memory_gb": round(os.sysconf("SC_PAGE_SIZE") *
                                                                    os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                     "platform": platform.platform(), "python": platform.python_version()},
            "versions": {"duckdb": duckdb.__version__, "pyarrow": pa.__version__, "numpy": np.__version__,
                         **({"ducklake_extension": engine.ext} if hasattr(engine, "ext") else {})}}


def main(argv: list[str] | None = None) -> int:
    global BUDGET_S
    ap = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=sorted(ENGINES), required=True)
    ap.add_argument("--sizes", default="40,400", help="pair-methods per size, comma separated (default 40,400)")
    ap.add_argument("--features", type=int, default=16384, help="features per SAE (default 16384)")
    ap.add_argument("-k", type=int, default=16, help="candidates per feature (default 16)")
    ap.add_argument("--lookups", type=int, default=100, help="random point lookups per path (default 100)")
    ap.add_argument("--publishes", type=int, default=6,
                    help="publishes timed per size (default 6; DuckLake: half INSERT, half add_data_files)")
    ap.add_argument("--budget-s", type=float, default=BUDGET_S,
                    help=f"seconds of lookups per path and size at most (default {BUDGET_S:g})")
    ap.add_argument("--storage-version", default="v1.4.0",
                    help="manifest: storage_compatibility_version of atlas.duckdb (default v1.4.0: CLIs >= 1.4 read it)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the synthetic atlases go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default bench/results/engine-<engine>-<UTC stamp>.json)")
    args = ap.parse_args(argv)
    BUDGET_S = args.budget_s
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if not sizes or sizes[0] < 1:
        ap.error("--sizes: give pair-method counts >= 1, e.g. 40,400")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    out_path = args.out or ROOT / "bench" / "results" / f"engine-{args.engine}-{stamp}.json"
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"engine-{args.engine}-", dir=args.workdir))
    try:
        engine = ENGINES[args.engine](work, args.features, args.k, args.storage_version)
        result = {"engine": args.engine, "when": stamp, **provenance(engine),
                  "params": {"sizes": sizes, "features": args.features, "k": args.k, "row_group": ROW_GROUP,
                             "lookups": args.lookups, "lookup_budget_s": BUDGET_S, "publishes": args.publishes,
                             "storage_version": args.storage_version if args.engine == "manifest" else None,
                             "rows_per_pair_method": args.features * args.k},
                  "sizes": []}
        engine.create()
        built, extra = 0, 1_000_000  # publishes use pair-method numbers beyond any size
        rng = np.random.default_rng(0)
        for n in sizes:
            t0 = time.perf_counter()
            engine.build(built, n)
            build_s = time.perf_counter() - t0
            built = n
            print(f"[{args.engine}] {n} pair-methods built in {build_s:.1f} s", file=sys.stderr, flush=True)
            size = {"pair_methods": n}
            if n == sizes[0]:
                pm, fa = min(1, n - 1), args.features // 3
                result["planted"] = {"pm": pm, "key": list(key(pm)), "feature_a": fa,
                                     "columns": ["feature_b", "score", "rank", "assigned", "rank_b", "run_id"],
                                     **engine.planted(pm, fa)}
                result["access"] = engine.access()
                if hasattr(engine, "writers"):
                    result["bytes_per_row_by_writer"] = engine.writers(0)
                result["snapshot"] = engine.snapshot(extra)
                extra += 1
            size["publish"] = engine.publish_variants(list(range(extra, extra + args.publishes)))
            extra += args.publishes
            lookups = [(int(p), int(f)) for p, f in zip(rng.integers(0, n, args.lookups),
                                                        rng.integers(0, args.features, args.lookups))]
            size["lookup"] = engine.lookups(lookups)
            rows, files = engine.counts()
            size.update(rows=rows, files=files, build_s=round(build_s, 2), disk=engine.disk(rows))
            result["sizes"].append(size)
            print(f"[{args.engine}] {json.dumps(size)}", file=sys.stderr, flush=True)
        if hasattr(engine, "close"):
            engine.close()
        result["total_s"] = round(time.perf_counter() - t_start, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
