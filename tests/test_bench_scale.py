"""`python -m bench scale` at a tiny size, run as a user types it: its JSON holds every measurement, its README
rows render from that JSON, and the atlas it generates is a table-file atlas whose planted chain is a lineage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import readme
from bench.scale import Shape, planted_chain

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--rows", str(3 * 512 * 16), "--small-rows", str(512 * 16), "--scale-d-sae", "512", "--scale-layers", "3"]


def _bench(tmp_path, *extra) -> subprocess.CompletedProcess:
    # the Python load client: `make test` needs nothing outside the venv (wrk is `make bench`'s)
    return subprocess.run([sys.executable, "-m", "bench", "scale", *TINY, "--scale-dir", str(tmp_path / "scale"),
                           "--results", str(tmp_path / "results"), "--load-client", "python", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_bench_scale_measures_a_generated_atlas_whose_planted_chain_is_a_lineage(tmp_path):
    from atlas.queries import lineage
    from atlas.store import Atlas

    r = _bench(tmp_path, "--seconds", "1", "--lineage-requests", "40", "--export-seconds", "30")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (out,) = (tmp_path / "results").glob("bench-*.json")
    data = json.loads(out.read_text())
    v = data["scale"]
    assert data["meta"]["params"]["rows"] == 3 * 512 * 16
    big, small = v["big"], v["small"]
    assert (big["match_rows"], big["pairs"], small["match_rows"], small["pairs"]) == (3 * 512 * 16, 3, 512 * 16, 1)
    for res in (big, small):
        assert 0 < res["publish"]["publish_s"] <= res["publish"]["job_s"] and len(res["publish"]["runs"]) == 3
        assert res["disk"]["match_rows"] == res["match_rows"] and 0 < res["disk"]["bytes_per_row"] < 64
    http = big["http"]
    assert "error" not in http, http.get("error")
    for endpoint in ("lineage", "feature_card"):
        assert set(http[endpoint]) == {"2", "8"} and http[endpoint]["8"]["req_per_s"] > 0
        assert http[endpoint]["8"]["non_2xx"] == 0 and http[f"{endpoint}_first_status"] == [200] * 4
        assert http[endpoint]["8"]["client"] == "python threads" and http[endpoint]["8"]["p99_ms"] > 0
    assert http["lineage_random"]["requests"] == 40 and http["rss_after_lineage_mb"] > 0
    assert http["export"]["status"] == 200 and http["export"]["complete"] and http["export"]["bytes"] > 1000
    for res in (big, small):  # the SQL macros against the served lineage, with the same edges
        q = res["sql"]
        assert q["same_edges"] == q["features"] == 40 and q["before_features"] == 10
        assert q["ratio"] == q["lineage_edges_p50_ms"] / q["served_lineage_p50_ms"] > 0
        assert q["lineage_edges_before_p50_ms"] > 0 and q["point_matches_by_b_p50_ms"] > 0
    table = readme.bench_table(tmp_path / "results")
    assert "scale: a job adding one pair-method" in table and "bytes** per match row" in table
    assert "`lineage_edges` by SQL" in table
    assert f"`{out.name}`" in readme.scale_sentence(tmp_path / "results")

    shape = Shape(3 * 512 * 16, 512, 3)
    atlas = Atlas(tmp_path / "scale" / f"new-{shape.key}" / "atlas.duckdb")
    with atlas.read() as con:
        assert con.execute("SELECT count(*) FROM matches").fetchone()[0] == 3 * 512 * 16
        assert con.execute("SELECT count(*), count(reverse_file) FROM parts").fetchone() == (3, 3)
        lin = lineage(con, "scale-s00-L00", 0)
    chain = planted_chain(shape)
    assert set(chain) <= {(n.sae_id, n.feature) for n in lin.nodes}
    carried = {((e.sae_a, e.feature_a), (e.sae_b, e.feature_b)): e for e in lin.edges}
    for a, b in zip(chain, chain[1:]):
        assert carried[(a, b)].kind == "carry" and carried[(a, b)].score >= 0.72

    again = _bench(tmp_path, "--no-http")  # the generated atlases are kept, keyed by their size
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("using the cached atlas") == 2


def test_load_client_counts_failures_and_falls_back_to_python_without_wrk(monkeypatch):
    """`--load-client auto` on a machine without wrk measures with the Python client; `wrk` asked for and
    missing says how to get it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pytest

    from bench import load

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok"
            self.send_response(200 if self.path == "/ok" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    Handler.protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(load.shutil, "which", lambda name: None)
    try:
        with pytest.raises(FileNotFoundError, match="make wrk"):
            load.http_load(["/ok"], base, 1, 2, "wrk")
        good = load.http_load(["/ok"], base, 0.5, 2, "auto")
        assert good["client"] == "python threads" and good["non_2xx"] == 0 and good["req_per_s"] > 0
        assert 0 < good["p50_ms"] <= good["p99_ms"] and good["connections"] == 2
        bad = load.http_load(["/missing"], base, 0.5, 2, "python")
        assert bad["non_2xx"] == bad["requests"] > 0  # every answer was a 404
        assert good["requests"] > 0
        once = load.http_load(["/ok"] * 7, base, 30, 2, once=True)  # each path once, then done
        assert (once["requests"], once["asked"], once["client"]) == (7, 7, "python threads")
    finally:
        server.shutdown()
