"""`python -m bench.hostile`: hostile requests against `atlas serve` on a copy of an atlas, tallied by answer.

Families (issue 31): SQL that tries to read the catalog or any file outside the table files, to write, to learn
server paths, or to stall the parser; routes asked for what was never computed; the same routes with the
atlas's .files/ folder moved away and with one table file deleted. Every answer must be a 4xx/503 in the error
envelope (or a 200 where the request is fair), none may carry the server's absolute paths or the catalog's
bytes, and the server must stay up. Prints the tally and writes bench/results/hostile-<time>.json.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

RESULTS = Path(__file__).parent / "results"


def _spellings(atlas: Path) -> list[str]:
    tables = atlas.with_name(atlas.stem + ".files") / "tables"
    root = atlas.parent
    return [str(atlas), f"{tables}/../../{atlas.name}", f"{tables}/./../../{atlas.name}", f"{tables}//../../{atlas.name}",
            f"{root}/./{atlas.name}", f"{root}//{atlas.name}", f"file://{atlas}", f"{atlas}.wal", f"{tables}/../..",
            f"{tables}/../*", f"{tables}/../../*", f"{tables}/../open/*/*", "/proc/self/root" + str(atlas),
            "/proc/self/cwd/" + atlas.name, *(f"/proc/self/fd/{n}" for n in range(0, 24)), "/etc/passwd",
            "/proc/self/environ", "/proc/self/maps", "~/.duckdb/stored_secrets/x", f"{tables}/**/../../../{atlas.name}"]


def escapes(atlas: Path) -> list[str]:
    """Reads of files outside the table files: any row back is an escape."""
    reads = ["SELECT octet_length(content) FROM read_blob('{p}')",
             "SELECT octet_length(content) FROM read_text('{p}')", "SELECT * FROM read_csv('{p}') LIMIT 3",
             "SELECT * FROM read_json('{p}') LIMIT 3", "SELECT * FROM read_parquet('{p}') LIMIT 3",
             "SELECT * FROM parquet_metadata('{p}')", "SELECT * FROM glob('{p}')", "SELECT * FROM '{p}' LIMIT 3"]
    return [r.format(p=p) for p in _spellings(atlas) for r in reads]


def sql_probes(atlas: Path) -> list[str]:
    tables = atlas.with_name(atlas.stem + ".files") / "tables"
    out = escapes(atlas)
    out += [f"COPY (SELECT 1) TO '{tables}/x.csv'", f"EXPORT DATABASE '{tables}'", f"ATTACH '{atlas}' AS again",
            f"ATTACH '{tables}/new.duckdb' AS n", "INSTALL httpfs", "LOAD httpfs", "SET enable_external_access = true",
            "SET allowed_directories = ['/']", "RESET allowed_directories", "PRAGMA enable_profiling",
            "CALL checkpoint()", "CHECKPOINT", "DETACH atlas", "USE system", "CREATE TEMP TABLE t AS SELECT 1",
            "SELECT * FROM duckdb_settings()", "SELECT * FROM duckdb_databases()", "SELECT sql FROM duckdb_views()",
            "SELECT source FROM saes", "SELECT current_setting('home_directory')", "SELECT * FROM duckdb_secrets()",
            "SELECT * FROM duckdb_extensions()", "SELECT * FROM pragma_database_size()", "FROM duckdb_temporary_files()",
            "SELECT * FROM read_parquet('http://127.0.0.1:1/x.parquet')", "SELECT getvariable('x')",
            f"SELECT * FROM read_parquet('{tables}/nope.parquet')", "SELECT * FROM nope",
            "SELECT " + "(" * 3000 + "1" + ")" * 3000, "SELECT 1 IN (" + ",".join("1" for _ in range(30000)) + ")",
            "WITH " + ", ".join(f"q{i}_ AS (FROM a)" for i in range(5500)) + " FROM a",
            "EXPLAIN WITH " + ", ".join(f"q{i}_ AS (FROM a)" for i in range(5400)) + " FROM a",
            "SELECT 1 -- " + "x" * 100_000, "SELECT repeat('x', 100000000)", "SELECT count(*) FROM range(10000000000)"]
    return out


def _get(base: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str]:
    url = urlsplit(base)
    con = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"content-type": "application/json"} if body is not None else {}
    con.request(method, path, body=body, headers=headers)
    r = con.getresponse()
    try:
        text = r.read()[:2_000_000].decode("latin-1")
    except (http.client.IncompleteRead, OSError):  # a 200 whose body broke off (a stream that failed)
        return f"{r.status} aborted", ""
    finally:
        con.close()
    return r.status, text


def route_probes(sae: str, sae_b: str, stack: str) -> list[str]:
    methods = ["decoder_cos", "decoder_mse", "encoder_cos", "activation_corr"]
    routes = [f"/api/pairs/{sae}/{sae_b}", f"/api/pairs/{sae_b}/{sae}", "/api/layer-pairs",
              f"/api/layer-pairs?stack={stack}", f"/api/stacks/{stack}/matrix", f"/api/stacks/{stack}/communities",
              f"/api/stacks/{stack}/births-deaths", f"/api/saes/{sae}/features/5/lineage", f"/api/saes/{sae}/features/5/steering",
              f"/api/neuronpedia/lists/lineage/{sae}/5", f"/api/neuronpedia/lists/pair/{sae}/{sae_b}"]
    out = [r + ("&" if "?" in r else "?") + f"method={m}" for r in routes for m in methods]
    return out + [f"/api/orphans?sae={sae}", f"/api/saes/{sae}/features/5/width-tree", "/api/width-pairs",
                  "/api/consistency", f"/api/saes/{sae}/features/5", f"/api/search?sae_id={sae}&feature=5",
                  "/api/export/matches.parquet", "/api/export/saes.parquet", "/health"]


def run(base: str, atlas: Path, routes: list[str], label: str, tally: dict, leaks: list) -> None:
    """Every probe once; answers tallied under `label` as 'status'."""
    probes = [("GET", r, None) for r in routes]
    probes += [("POST", "/api/sql", json.dumps({"sql": s}).encode()) for s in sql_probes(atlas)]
    probes += [("GET", "/api/sql?sql=" + quote(s), None) for s in sql_probes(atlas) if len(s) < 4000]
    escape = {json.dumps({"sql": s}).encode() for s in escapes(atlas)} | {"/api/sql?sql=" + quote(s) for s in escapes(atlas)}
    for method, path, body in probes:
        status, text = _get(base, path, method, body)
        tally[label][str(status)] += 1
        read = status == 200 and (body in escape or path in escape) and json.loads(text)["rows"]
        if str(atlas.parent) in text or read or isinstance(status, str) or status >= 500 and status != 503:
            leaks.append({"case": label, "request": (method, path[:200], (body or b"")[:200].decode()),
                          "status": status, "answer": text[:300]})


def main(argv=None) -> None:
    from bench import record
    from bench.flood import _serving
    from atlas.store import Atlas

    p = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    p.add_argument("--atlas", type=Path, required=True, help="An atlas to copy (the copy is what the probes break).")
    p.add_argument("--code", type=Path, default=None, help="Serve with the code of this checkout (e.g. /work/main).")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="atlas-hostile-"))
    atlas = Atlas(args.atlas).copy_to(work / "atlas.duckdb")
    tally: dict = collections.defaultdict(collections.Counter)
    leaks: list = []
    with atlas.read() as con:
        (sae, stack), sae_b = con.execute("SELECT sae_id, stack FROM saes ORDER BY stack, layer LIMIT 1").fetchone(), \
            con.execute("SELECT sae_id FROM saes ORDER BY stack, layer LIMIT 1 OFFSET 1").fetchone()[0]
        rel = con.execute("SELECT file FROM parts WHERE table_name = 'matches' LIMIT 1").fetchone()[0]
    routes = route_probes(sae, sae_b, stack)
    with _serving(atlas.path, args.code) as server:
        run(server.base, atlas.path, routes, "whole atlas", tally, leaks)
        away = work / "moved.files"
        atlas.dir.rename(away)
        run(server.base, atlas.path, routes, "atlas.files moved away", tally, leaks)
        made = atlas.dir.exists()
        if made:  # a server that re-created the folder: put the real one back beside it
            shutil.rmtree(atlas.dir)
        away.rename(atlas.dir)
        (atlas.tables_dir / rel).unlink()
        run(server.base, atlas.path, routes, "one matches file deleted", tally, leaks)
        alive = _get(server.base, "/health")[0]
    out = {"meta": record.metadata(vars(args)), "code": str(args.code or "this tree"),
           "tally": {k: dict(v) for k, v in tally.items()}, "total": sum(sum(v.values()) for v in tally.values()),
           "bad_answers": leaks, "made_files_folder_while_away": made, "health_after": alive}
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"hostile-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in ("code", "tally", "total", "made_files_folder_while_away", "health_after")}))
    print(f"{len(leaks)} bad answers (5xx, server paths or catalog bytes); wrote {path}")


if __name__ == "__main__":
    main()
