"""`python -m bench.flood`: the server under the two floods of issue 31, side by side with a quiet baseline.

- slow-parse: clients post SQL that DuckDB takes long to parse (a chain of CTEs near the length cap) as fast as
  they are answered, while one client times /health and a lineage. Target: /health p99 < 100 ms at 16 clients.
- non-reading: clients ask for a 16 MB answer and never read it; the server's resident size is sampled before,
  at its peak and after the clients have gone. Target: it moves by < 100 MB at 64 clients and comes back.

Writes bench/results/flood-<time>.json (bench/record.py metadata, load average per run). `--code DIR` serves the
atlas with another checkout's code (e.g. the main branch) for a before/after table on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

RESULTS = Path(__file__).parent / "results"
BIG = "SELECT repeat('x', 16000000) AS s"


def slow_statement(max_chars: int = 100_000) -> str:
    """WITH qa_ AS (FROM a), qb_ AS (FROM a), ... FROM a: DuckDB's parser is superlinear in the CTE count."""
    names, n = [], 0
    while True:
        k, name = n, ""
        while True:
            name = chr(97 + k % 26) + name
            k = k // 26 - 1
            if k < 0:
                break
        part = f"q{name}_ AS (FROM a)"
        if 5 + sum(len(p) + 2 for p in names) + len(part) + 7 > max_chars:
            return "WITH " + ", ".join(names) + " FROM a"
        names.append(part)
        n += 1


def _post_sql(con: http.client.HTTPConnection, sql: str) -> int:
    con.request("POST", "/api/sql", body=json.dumps({"sql": sql}), headers={"content-type": "application/json"})
    r = con.getresponse()
    r.read()
    return r.status


def _probe(base: str, paths: list[str], n: int, gap_s: float, max_s: float = 60.0) -> dict[str, list[float]]:
    """Each path n times in turn (or until max_s has passed) on one keep-alive connection, gap_s apart:
    seconds per request."""
    url = urlsplit(base)
    con = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    out: dict[str, list[float]] = {p: [] for p in paths}
    end = time.perf_counter() + max_s
    for _ in range(n):
        if time.perf_counter() > end:
            break
        for p in paths:
            t0 = time.perf_counter()
            con.request("GET", p)
            r = con.getresponse()
            r.read()
            out[p].append(time.perf_counter() - t0)
            assert r.status == 200, (p, r.status)
        time.sleep(gap_s)
    con.close()
    return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(q * len(xs)))]


def _summary(lat: dict[str, list[float]], names: dict[str, str]) -> dict:
    return {**{f"{names[p]}_{k}_ms": round(v, 1) for p, xs in lat.items()
               for k, v in (("p50", _pct(xs, 0.5)), ("p99", _pct(xs, 0.99)), ("max", 1000 * max(xs)))},
            "probes": len(next(iter(lat.values())))}


def slow_parse_flood(base: str, probe_paths: dict[str, str], clients: int, n_probe: int = 100) -> dict:
    """`clients` threads post the slow statement back to back while the probe runs; their answers, by status."""
    sql, stop, codes = slow_statement(), threading.Event(), {}
    url = urlsplit(base)

    def flood():
        con = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        while not stop.is_set():
            try:
                s = _post_sql(con, sql)
            except (OSError, http.client.HTTPException):
                con.close()
                con = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
                s = "dropped"
            codes[s] = codes.get(s, 0) + 1
        con.close()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    lat = _probe(base, list(probe_paths), n_probe, 0.02)
    wall = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join(120)
    return {"clients": clients, "statement_chars": len(sql), **_summary(lat, probe_paths), "probe_s": round(wall, 1),
            "flood_answers": {str(k): v for k, v in sorted(codes.items(), key=str)}, "load_1min": round(load0, 2),
            "load_1min_after": round(os.getloadavg()[0], 2)}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def unread_flood(base: str, pid: int, probe_paths: dict[str, str], clients: int, hold_s: float = 12.0) -> dict:
    """`clients` connections ask for a 16 MB answer and read nothing for hold_s; then they close."""
    url = urlsplit(base)
    body = json.dumps({"sql": BIG}).encode()
    request = (f"POST /api/sql HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    before = rss_mb(pid)
    socks = []
    for _ in range(clients):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little: the server must
        s.connect((url.hostname, url.port))
        s.sendall(request)
        socks.append(s)
    peak, stop = [before], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(rss_mb(pid))
            time.sleep(0.05)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    load0 = os.getloadavg()[0]
    lat = _probe(base, list(probe_paths), 40, 0.1)
    time.sleep(max(0.0, hold_s - 40 * 0.1))
    statuses = []
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(64)
            statuses.append(head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "none")
        except (BlockingIOError, IndexError):
            statuses.append("none")
        except OSError:
            statuses.append("dropped")
        s.close()
    time.sleep(3.0)
    stop.set()
    sampler.join()
    after = rss_mb(pid)
    return {"clients": clients, "rss_before_mb": round(before, 1), "rss_peak_mb": round(max(peak), 1),
            "rss_after_mb": round(after, 1), "rss_moved_mb": round(max(peak) - before, 1),
            "first_bytes": {k: statuses.count(k) for k in sorted(set(statuses))}, **_summary(lat, probe_paths),
            "load_1min": round(load0, 2)}


def _atlas(work: Path) -> Path:
    from atlas.store import Atlas
    from atlas.synth import SynthConfig, generate
    from tests.conftest import build_atlas

    path = work / "atlas.duckdb"
    if not path.exists():
        build_atlas(path, generate(SynthConfig(d_in=512, d_sae=256, n_layers=4, n_seeds=2, seed=7), work / "saes"))
    return Atlas(path).path


@contextlib.contextmanager
def _serving(atlas: Path, code: Path | None):
    """`atlas serve` of this tree (bench/server.py), or of the checkout `code` (its own cli, api and atlas)."""
    from bench.server import free_port, serving
    from atlas_ingest.server_process import Server

    if code is None:
        with serving(atlas) as server:
            yield server
        return
    here = os.getcwd()
    os.chdir(code)  # `python -m atlas_cli` finds the checkout's cli first
    try:
        server = Server(atlas, port=free_port(), env=dict(os.environ, PYTHONPATH=str(code.resolve())))
    finally:
        os.chdir(here)
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


def main(argv=None) -> None:
    from bench import record

    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__)
    p.add_argument("--atlas", type=Path, default=None, help="Serve this atlas [default: a small synthetic one].")
    p.add_argument("--code", type=Path, default=None, help="Serve with the code of this checkout (e.g. /work/main).")
    p.add_argument("--parse-clients", default="1,4,16")
    p.add_argument("--unread-clients", default="32,64")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    atlas = (args.atlas or _atlas(Path(tempfile.mkdtemp(prefix="atlas-flood-")))).resolve()
    from atlas.store import Atlas

    with Atlas(atlas).read() as con:
        sae = con.execute("SELECT sae_id FROM saes ORDER BY stack, layer LIMIT 1").fetchone()[0]
    with _serving(atlas, args.code) as server:
        probes = {"/health": "health", f"/api/saes/{sae}/features/5/lineage": "lineage"}
        out = {"meta": record.metadata(vars(args)), "code": str(args.code or "this tree"),
               "quiet": {**_summary(_probe(server.base, list(probes), 100, 0.02), probes),
                         "load_1min": round(os.getloadavg()[0], 2)}}
        print("quiet", out["quiet"], flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        path = args.results / f"flood-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(out, indent=1))
        out["slow_parse"] = []
        for n in map(int, args.parse_clients.split(",")):
            out["slow_parse"].append(slow_parse_flood(server.base, probes, n))
            print("slow-parse", out["slow_parse"][-1], flush=True)
            path.write_text(json.dumps(out, indent=1))
        out["unread"] = []
        for n in map(int, args.unread_clients.split(",")):
            out["unread"].append(unread_flood(server.base, server.proc.pid, probes, n))
            print("non-reading", out["unread"][-1], flush=True)
            path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}; p50 over runs of /health under slow parse:",
          statistics.median(r["health_p50_ms"] for r in out["slow_parse"]))


if __name__ == "__main__":
    main()
