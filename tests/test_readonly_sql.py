"""Read-only means read-only (issue 20): no SQL form writes a byte into the atlas, and SQL cannot starve the
other routes (its own gate, 503 + Retry-After when full, dead workers replaced at once)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from litestar.testing import TestClient

from atlas_api.app import create_app
from atlas_api.settings import Settings
from bench.flood import slow_statement
from bench.server import free_port

SAE0 = "synth-resid0-w256-s0-A"
SAE1 = "synth-resid1-w256-s0-A"
SLOW = "SELECT sum(hash(i)) FROM range(20000000000) t(i)"  # CPU-bound: runs until the time limit stops it


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _pair_file(atlas) -> Path:
    with atlas.read() as con:
        rel = con.execute("SELECT file FROM parts WHERE table_name = 'matches' AND sae_a = ? AND sae_b = ? AND "
                          "method = 'decoder_cos'", [SAE0, SAE1]).fetchone()[0]
    return atlas.tables_dir / rel


def _tampering(pair: Path) -> list[str]:
    """The write forms of the probe, aimed at the pair's own file and its folder."""
    src = f"(SELECT feature_a, feature_b, 0.123 AS score FROM read_parquet('{pair}'))"
    return [
        f"COPY {src} TO '{pair}' (FORMAT parquet)",
        f"COPY {src} TO '{pair}.new' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY {src} TO '{pair}' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY {src} TO '{pair.parent}/fill.csv'",
        f"explain /* a comment */ analyse copy {src} to '{pair}'",
        f"EXPLAIN (FORMAT json, ANALYZE) COPY {src} TO '{pair}'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE INSERT INTO saes (sae_id) VALUES ('x')",
        f"EXPORT DATABASE '{pair.parent}'",
        f"ATTACH '{pair.parent}/x.duckdb' AS x",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "CALL checkpoint()",
    ]


def test_every_write_form_is_refused_and_the_files_stay_identical(synth_atlas, tmp_path):
    atlas = synth_atlas.copy_to(tmp_path / "atlas.duckdb")
    pair = _pair_file(atlas)
    before = _digest(atlas.tables_dir)
    with TestClient(create_app(atlas.path, Settings(sql_workers=1))) as c:
        for sql in _tampering(pair):
            r = c.get("/api/sql", params={"sql": sql})
            assert r.status_code in (400, 403), (sql, r.status_code, r.text)
            assert r.json()["ok"] is False
        assert c.get("/api/sql", params={"sql": f"EXPLAIN ANALYZE SELECT count(*) FROM read_parquet('{pair}')"}
                     ).status_code == 200  # what EXPLAIN ANALYZE is for still works
        assert c.get(f"/api/pairs/{SAE0}/{SAE1}").json()[0]["score"] != 0.123
    assert _digest(atlas.tables_dir) == before


_SANDBOXED = """
import sys, duckdb
from atlas_api.sandbox import deny_writes
from atlas.store import Snapshot
how = deny_writes()
con = Snapshot(sys.argv[1]).con
refused = 0
for sql in sys.argv[2:]:
    try:
        con.execute(sql)
    except duckdb.Error:
        refused += 1
print(how, refused)
"""


def test_the_sql_workers_connection_cannot_write_files_even_past_the_statement_check(synth_atlas, tmp_path):
    """The second guard on its own: a sandboxed process runs COPY TO directly (no statement check) and fails."""
    atlas = synth_atlas.copy_to(tmp_path / "atlas.duckdb")
    pair = _pair_file(atlas)
    before = _digest(atlas.tables_dir)
    src = f"(SELECT * FROM read_parquet('{pair}'))"
    writes = [f"COPY {src} TO '{pair}' (FORMAT parquet)", f"COPY {src} TO '{pair}.new' (FORMAT parquet)",
              f"EXPLAIN ANALYZE COPY {src} TO '{pair.parent}/fill.csv'"]
    out = subprocess.run([sys.executable, "-c", _SANDBOXED, str(atlas.path), *writes], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    how, refused = " ".join(out.stdout.split()[:-1]), int(out.stdout.split()[-1])
    if not how.startswith("landlock"):
        pytest.skip("no Landlock on this kernel: RLIMIT_FSIZE alone stops writes but not a truncating open")
    assert refused == len(writes), out.stdout
    assert _digest(atlas.tables_dir) == before, how


@pytest.fixture(scope="module")
def server(synth_atlas):
    """The app under uvicorn on loopback (a real event loop and thread pool, as in production)."""
    port = free_port()
    settings = {"sql_time_limit_s": 1.0, "sql_workers": 1, "query_time_limit_s": 5.0}
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "ATLAS_PATH": str(synth_atlas.path),
           "ATLAS_SETTINGS": json.dumps(settings)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "atlas_api.app:app_from_env", "--port", str(port),
                             "--log-level", "warning", "--h11-max-incomplete-event-size", str(2 * 2**20)], env=env, stdin=subprocess.DEVNULL)
    import httpx

    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/api/sql", params={"sql": "SELECT 1"}, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_sql_flood_leaves_health_and_lineage_answering(server):
    import httpx

    answers: list[httpx.Response] = []
    stop = threading.Event()

    def flood():
        with httpx.Client(base_url=server, timeout=30) as c:
            while not stop.is_set():
                answers.append(c.get("/api/sql", params={"sql": SLOW}))

    threads = [threading.Thread(target=flood) for _ in range(8)]  # bounded: 8 clients on loopback
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the queue is full
        latencies = []
        with httpx.Client(base_url=server, timeout=10) as c:
            for _ in range(60):
                t0 = time.perf_counter()
                assert c.get("/health").status_code == 200
                latencies.append(time.perf_counter() - t0)
                time.sleep(0.02)
            lineage = c.get(f"/api/saes/{SAE0}/features/5/lineage")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert lineage.status_code == 200 and lineage.json()["nodes"], lineage.text
    p99 = sorted(latencies)[int(0.99 * len(latencies)) - 1]
    assert p99 < 0.1, f"/health p99 {p99 * 1000:.0f} ms under a SQL flood"
    codes = {r.status_code for r in answers}
    assert codes <= {408, 503}, codes
    busy = [r for r in answers if r.status_code == 503]
    assert busy and all(int(r.headers["retry-after"]) >= 1 and r.json()["ok"] is False for r in busy)


def test_a_long_get_sql_is_answered_in_the_envelope(server):
    """100,000 characters (the schema's bound) percent-encode past h11's 16 KiB default (atlas serve raises it)."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    sql = "SELECT 1 AS x -- " + "é" * (100_000 - 17)
    conn = http.client.HTTPConnection(urlsplit(server).netloc, timeout=30)  # httpx refuses URLs this long
    conn.request("GET", "/api/sql?" + urlencode({"sql": sql}))
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["rows"] == [[1]]


def test_a_killed_worker_is_replaced_at_once(synth_atlas):
    from atlas_api.sqlpool import SQLPool
    from atlas.errors import OverBudget

    pool = SQLPool(str(synth_atlas.path), 1, "512MB", 1)
    try:
        assert _rows(pool.run("SELECT 1", 10, 5, 10_000)) == [[1]]
        idle = pool.idle.get()
        pool.idle.put(idle)
        os.kill(idle.process.pid, signal.SIGKILL)  # killed while idle
        idle.process.join(5)
        t0 = time.perf_counter()
        assert _rows(pool.run("SELECT 2", 10, 5, 10_000)) == [[2]]
        assert time.perf_counter() - t0 < 5

        got: list[Exception] = []

        def run_slow():
            try:
                pool.run(SLOW, 10, 30, 10_000)
            except Exception as e:  # noqa: BLE001  (checked below)
                got.append(e)
        running = threading.Thread(target=run_slow)
        running.start()
        time.sleep(0.5)
        busy = next(p for p in __import__("multiprocessing").active_children() if p.name == "atlas-sql")
        os.kill(busy.pid, signal.SIGKILL)  # killed while running
        running.join(5)
        assert not running.is_alive() and isinstance(got[0], OverBudget) and "died" in str(got[0])
        t0 = time.perf_counter()
        assert _rows(pool.run("SELECT 3", 10, 5, 10_000)) == [[3]]  # not the old 10 s wait for a worker
        assert time.perf_counter() - t0 < 5 and pool.count == 1
    finally:
        pool.close()


def test_sql_reads_only_the_table_files_and_shows_paths_relative_to_the_atlas(synth_atlas, tmp_path):
    """Issue 31: on main `read_blob('…/tables/../../atlas.duckdb')` answered 200 with the whole catalog file (DuckDB
    lets a connection read its own database file whatever allowed_directories says), and absolute server paths
    showed in duckdb_settings(), glob, saes.source and error messages."""
    atlas = synth_atlas.copy_to(tmp_path / "atlas.duckdb")
    tables = atlas.tables_dir
    catalog = [f"{tables}/../../atlas.duckdb", str(atlas.path), f"{tables}/../../atlas.duckdb.wal",
               "/proc/self/fd/3", "/proc/self/fd/4", "/proc/self/fd/5"]
    with TestClient(create_app(atlas.path, Settings(sql_workers=1))) as c:
        for path in catalog:
            for fn in ("read_blob", "read_text"):
                r = c.get("/api/sql", params={"sql": f"SELECT octet_length(content::BLOB) FROM {fn}('{path}')"})
                assert r.status_code in (400, 403), (path, fn, r.status_code, r.text[:300])
        assert c.get("/api/sql", params={"sql": f"SELECT count(*) FROM glob('{tables}/../../*')"}).status_code == 403
        for sql in ["SELECT * FROM duckdb_settings()", "SELECT * FROM duckdb_databases()", "SELECT source FROM saes",
                    f"SELECT file FROM glob('{tables}/**')", "SELECT sql FROM duckdb_views()",
                    f"SELECT * FROM read_parquet('{tables}/nope.parquet')", f"SELECT * FROM '{tables}/../x.csv'"]:
            r = c.get("/api/sql", params={"sql": sql})
            assert str(tmp_path) not in r.text and "/root" not in r.text, (sql, r.text[:400])
            if sql.startswith("SELECT file FROM glob"):
                assert r.json()["rows"] and all(f.startswith("atlas.files/tables/") for f, in r.json()["rows"])
        rows = c.get("/api/sql", params={"sql": "SELECT count(*) FROM matches"}).json()["rows"]
        assert rows[0][0] > 0  # the table files themselves stay readable


_CONFINED = """
import sys, duckdb
from pathlib import Path
from atlas_api.sandbox import confine_reads, deny_writes
from atlas_api.sqlpool import _libraries, _private_catalog
from atlas.store.snapshot import tables_dir
import atlas.store.snapshot as snapshot
if sys.argv[3] == "copy":  # as where no link can be made (a read-only folder)
    snapshot.open_link = lambda path: None
atlas = sys.argv[1]
target, stamp, opened = _private_catalog(atlas)
assert opened.name.startswith("atlas-sql-") == (sys.argv[3] == "copy")
deny_writes()
if not confine_reads([tables_dir(atlas), opened, *_libraries(atlas)]):
    print("no-landlock"); sys.exit()
con = duckdb.connect()  # no DuckDB guard at all: only the kernel's
out = []
for path in (atlas, tables_dir(atlas) / "../../atlas.duckdb", "/etc/hostname", sys.argv[2]):
    try:
        out.append(str(con.execute(f"SELECT octet_length(content) > 0 FROM read_blob('{path}')").fetchone()[0]))
    except duckdb.Error:
        out.append("refused")
try:
    open(atlas, "rb").read(16)
    out.append("read")
except PermissionError:
    out.append("refused")
print(*out)
"""


@pytest.mark.parametrize("opened_by", ["link", "copy"])
def test_the_sql_workers_reads_are_confined_to_the_table_files_by_the_kernel(synth_atlas, tmp_path, opened_by):
    """The second guard on its own: a process confined as a SQL worker is, with a DuckDB connection that has no
    guard of its own, reads a table file but neither the catalog (by any name) nor anything else outside."""
    atlas = synth_atlas.copy_to(tmp_path / "atlas.duckdb")
    out = subprocess.run([sys.executable, "-c", _CONFINED, str(atlas.path), str(_pair_file(atlas)), opened_by],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no-landlock":
        pytest.skip("no Landlock on this kernel: DuckDB's own allowed paths are the only guard")
    assert out.stdout.split() == ["refused", "refused", "refused", "True", "refused"], out.stdout


def _rows(answer: tuple[bytes, bool]) -> list:
    """The rows of a SQL worker's JSON answer (body, truncated)."""
    return json.loads(answer[0])["rows"]


def test_a_slow_to_parse_statement_is_stopped_at_its_parse_time_limit(synth_atlas):
    """The statement check runs on the worker, under a CPU-time limit of its own: past it the worker is replaced
    and the answer is a 408 naming the parse."""
    from atlas_api.sqlpool import ParseTimeout, SQLPool
    from atlas.errors import QueryError

    pool = SQLPool(str(synth_atlas.path), 1, "512MB", 1)
    try:
        with pytest.raises(ParseTimeout, match="to parse"):
            pool.run(slow_statement(), 10, 30, 10_000, parse_s=0.02)
        with pytest.raises(QueryError, match="characters; at most 100,000"):
            pool.run("SELECT 1 -- " + "x" * 100_000, 10, 5, 10_000)
        assert _rows(pool.run("SELECT 7", 10, 5, 10_000)) == [[7]]
    finally:
        pool.close()


def test_sql_answers_from_the_snapshot_a_job_just_published(synth_atlas, tmp_path):
    """A worker cannot reopen the atlas once its reads are confined: it says it is stale and a fresh one serves."""
    atlas = synth_atlas.copy_to(tmp_path / "atlas.duckdb")
    count = {"sql": "SELECT count(*) FROM pair_stats"}
    with TestClient(create_app(atlas.path, Settings(sql_workers=1))) as c:
        before = c.get("/api/sql", params=count).json()["rows"][0][0]
        with atlas.write() as w:
            w.con.execute("DELETE FROM pair_stats WHERE method = 'encoder_cos'")
        after = c.get("/api/sql", params=count).json()["rows"][0][0]
        assert 0 < after < before
