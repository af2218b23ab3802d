"""`python -m bench.engine` (the storage engine measurement behind docs/storage.md) runs as written, at a tiny
size, and its point lookups return the planted rows."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
M = 2**32  # the bench's row formula, restated here so the check does not trust the code it checks


def mix(i: int, c: int) -> int:
    x = (i * 2654435761 + c) % M
    x = ((x ^ (x >> 15)) * 0x45D9F3B) % M
    return x ^ (x >> 13)


def planted(pm: int, feature_a: int, rank: int, features: int, k: int = 16) -> tuple[int, float, bool, int, str]:
    i = feature_a * k + rank - 1
    score = 0.9 - 0.04 * (rank - 1) + 0.03 * mix(i, pm * 97 + 1) / M
    return mix(i, pm * 7) * features // M, score, rank == 1, 1 + mix(i, pm * 13 + 2) * k // M, f"run-{pm:08d}"


def test_manifest_engine_runs_and_finds_the_planted_rows(tmp_path):
    out = tmp_path / "engine.json"
    p = subprocess.run([sys.executable, "-m", "bench.engine", "--engine", "manifest", "--sizes", "3",
                        "--features", "256", "--lookups", "10", "--publishes", "2", "--workdir", str(tmp_path),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["engine"] == "manifest" and r["commit"] and r["host"]["cores"] >= 1 and r["versions"]["duckdb"]
    (size,) = r["sizes"]
    assert size["pair_methods"] == 3 and size["files"] == 3 + 1 + 2  # + the snapshot check's and the 2 publishes
    assert size["rows"] == size["files"] * 256 * 16
    assert size["publish"]["catalog_swap"]["commit_s"] > 0 and size["publish"]["catalog_swap"]["repeats"] == 2
    assert 0 < size["disk"]["bytes_per_row"] < 50
    for path in ("sql_view_cold", "sql_view_metadata_cache_warm", "sql_catalog_one_file", "sql_view_hive_cold",
                 "direct_pyarrow_cold",
                 "direct_pyarrow_warm"):
        lookup = size["lookup"][path]
        assert lookup["correct"] is True and lookup["n"] == 10 and 0 < lookup["p50_ms"] <= lookup["p99_ms"], path

    got = r["planted"]
    assert got["pm"] == 1 and got["feature_a"] == 256 // 3
    assert got["key"] == ["gemmascope-2b-res-16k/layer_0", "gemmascope-2b-res-16k/layer_1", "encoder_cos"]
    for rows in (got["sql"], got["direct"]):
        assert [row[2] for row in rows] == list(range(1, 17))  # all 16 candidates, in rank order
        for feature_b, score, rank, assigned, rank_b, run_id in rows:
            want = planted(1, 85, rank, 256)
            assert (feature_b, assigned, rank_b, run_id) == (want[0], want[2], want[3], want[4])
            assert abs(score - want[1]) < 1e-6

    assert r["access"]["plain_python_readonly"] == {"ok": True, "out": str(3 * 256 * 16)}
    assert r["access"]["locked_down"] == {"ok": True, "out": f"{3 * 256 * 16} outside: refused"}
    snap = r["snapshot"]
    assert snap["old_reader_keeps_snapshot"] and snap["new_reader_sees_commit"]
    assert snap["other_process_reads_while_job_writes"]["ok"]


def test_engine_bench_runs_without_the_projects_packages():
    """The DuckLake run uses another interpreter (duckdb 1.5.5) that lacks atlas' dependencies."""
    tree = ast.parse((ROOT / "bench" / "engine.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - set(sys.stdlib_module_names) <= {"duckdb", "numpy", "pyarrow", "__future__"}
