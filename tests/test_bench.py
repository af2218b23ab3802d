"""Bench results carry their provenance, and the README's numbers are generated from them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import readme

README = Path(readme.README)


def test_readme_numbers_are_the_newest_results():
    """Fails when a result or the README changes without `make readme-bench`."""
    text = README.read_text()
    assert all(f"<!-- {name}:start -->" in text for name in readme.BLOCKS)
    assert readme.render(text) == text, "README.md is stale: run `make readme-bench`"
    for name in re.findall(r"`((?:bench|findings|family)-\d{8}T\d{6}\.json)`", text):
        assert (readme.RESULTS / name).exists(), name


def _result(path: Path, stamp: str, **sections) -> None:
    meta = {"commit": "a" * 40, "dirty": False, "host": {"cpu": "Test CPU", "cores": 4, "memory_gb": 16.0, "gpu": None}}
    (path / f"bench-{stamp}.json").write_text(json.dumps({"meta": meta, **sections}))


STACK = {"layers": 26, "d_sae": 16384, "d_in": 2304, "pairs": 49, "ingest_s": 12.0, "ingest_features_per_s": 35000.0,
         "match_s": 490.0, "end_to_end_min": 16.5, "peak_rss_mb": 6000.0, "atlas_mb": 160.0}


def test_tables_take_each_section_from_its_newest_file(tmp_path):
    _result(tmp_path, "20260101T000000", stack=dict(STACK, match_s=100.0, end_to_end_min=2.0),
            ray={"layers": 26, "d_sae": 4096, "d_in": 2304, "pairs": 49, "in_process_s": 60.0, "ray_2_workers_s": 66.0,
                 "ray_overhead_ratio": 1.1, "identical_edges": True, "max_score_diff": 0.0})
    _result(tmp_path, "20260102T000000", stack=STACK)
    table = readme.bench_table(tmp_path)
    stack_row = next(line for line in table.splitlines() if "synthetic stack" in line)
    assert "**16.5 min**" in stack_row and "10.0 s/pair" in stack_row and "< 15 min (missed)" in stack_row
    assert f"≈ {2 * 16384**2 * 2304 / 10.0 / 1e9:.0f} GFLOP/s" in stack_row
    assert "`bench-20260102T000000.json` (4 cores Test CPU, 16 GB, no GPU; commit aaaaaaaaa)" in stack_row
    ray_row = next(line for line in table.splitlines() if line.startswith("| Ray"))
    assert "**1.10×**" in ray_row and "edges identical" in ray_row and "20260101T000000" in ray_row
    assert "(missed)" not in ray_row
    plan = readme.plan_sentence(tmp_path)
    assert "10.0 s (≈ 124 GFLOP/s)" in plan and "≈ 10 days" in plan and "4 CPU cores" in plan
    doc = "x\n<!-- bench-table:start -->\nold\n<!-- bench-table:end -->\ny"
    assert readme.render(doc, tmp_path) == f"x\n<!-- bench-table:start -->\n{table}\n<!-- bench-table:end -->\ny"


def test_a_bench_run_records_commit_host_versions_and_parameters(tmp_path, monkeypatch):
    import bench.__main__ as bench_main

    monkeypatch.setattr(bench_main, "RESULTS", tmp_path)
    bench_main.main(["assignment", "--d-sae", "1024", "--workdir", str(tmp_path / "work")])
    (out,) = tmp_path.glob("bench-*.json")
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert re.fullmatch(r"[0-9a-f]{40}", meta["commit"]) and isinstance(meta["dirty"], bool)
    assert meta["host"]["cores"] >= 1 and meta["host"]["memory_gb"] > 0 and "gpu" in meta["host"]
    assert {"numpy", "torch", "duckdb", "faiss-cpu"} <= set(meta["versions"]) or "faiss-gpu-cu12" in meta["versions"]
    assert meta["params"]["d_sae"] == 1024 and meta["params"]["sections"] == ["assignment"]
    assert [r["n"] for r in data["assignment"]] == [4096, 1024]


def test_findings_artifact_is_the_cli_output_and_feeds_the_table(synth_atlas, tmp_path):
    from bench import findings

    out = tmp_path / "findings-20260101T000000.json"
    findings.main(["--atlas", str(synth_atlas.path), "--model", "synth", "--stack", "%", "--out", str(out)])
    art = json.loads(out.read_text())
    assert art["command"] == "atlas findings --json --model synth --stack '%'"
    assert art["atlas"]["n_saes"] == 16 and "A seed 0 at layers 0/1/2/3" in art["atlas"]["summary"]
    from click.testing import CliRunner

    from atlas_cli import main

    r = CliRunner().invoke(main, ["--atlas", str(synth_atlas.path), "findings", "--json", "--model", "synth"])
    assert json.loads(r.output) == art["findings"]
    table = readme.findings_table(tmp_path)
    d1 = next(x for x in art["findings"]["distance"] if x["distance"] == 1)
    assert f"distance 1: **{readme._pct(d1['matched_frac'])}**" in table and "`findings-20260101T000000.json`" in table
    seed = next(x for x in art["findings"]["siblings"] if x["relation"] == "seed")
    assert readme._pct(seed["shared_frac"]) in table


def test_match_one_bench_keeps_the_baseline_of_its_shape_for_the_second_job(tmp_path):
    """`python -m bench match-one` at a toy size: the first job computes and keeps PW-MCC's random baseline,
    the second (same shape) reads it; both are timed against one bare candidate search; its row renders."""
    from bench import match_one

    v = match_one.run(tmp_path, d_sae=256, d_in=48)
    assert v["baselines_kept"] == 1 and v["baseline_s"] > 0 and 0 < v["pw_mcc_random"] < v["pw_mcc"]
    assert v["known_vs_candidates"] == v["known_job_cpu_s"] / v["candidates_cpu_s"] > 0
    _result(tmp_path, "20260101T000000", **{"match-one": v})
    row = next(line for line in readme.bench_table(tmp_path).splitlines() if "one `atlas match` job" in line)
    assert f"**{v['known_vs_candidates']:.2f}×**" in row


def test_cofiring_rows_say_which_state_the_memory_budget_chose(tmp_path):
    row = {"d_a": 16384, "d_b": 16384, "tokens": 1_000_000, "state": "exact", "memory_budget_gb": 4.0, "seconds": 90.0,
           "cpu_s": 50.0, "topk_s": 4.0, "peak_mb": 4200.0, "pairs_kept": 243_900_000, "prunes": 0, "error_bound": 0.0,
           "sample_features": 64, "recall_top16": 1.0, "recall_top16_r_ge_0.1": 1.0, "planted_top1": 1.0,
           "bound_s": 100.0, "bound_cpu_s": 60.0, "bound_pairs": 243_900_000, "bound_peak_mb": 6000.0, "l0_a": 70.0,
           "ratio_vs_bound": 50 / 60, "wall_ratio_vs_bound": 0.9}
    capped = dict(row, state="capped", cpu_s=90.0, ratio_vs_bound=1.5, pairs_kept=16_000_000, prunes=17,
                  error_bound=0.07, recall_top16=0.75)
    _result(tmp_path, "20260101T000000", cofiring=[dict(row, tokens=100_000), row, capped])
    lines = [line for line in readme.bench_table(tmp_path).splitlines() if "co-firing" in line]
    assert len(lines) == 3
    assert "100k tokens" in lines[0] and "1000k tokens" in lines[1] and "capped" in lines[2]
    assert "**0.83×**" in lines[1] and "exact" in lines[1] and "(missed)" not in lines[1]
    assert "**1.50×**" in lines[2] and "0.750" in lines[2] and "(missed)" not in lines[2]  # no target: the fallback


def test_readme_init_control_is_the_inits_json():
    """The README's shared-init → own-inits rows are bench/results/inits/'s numbers (same family, same command)."""
    text = README.read_text()
    arts = {k: json.loads((readme.RESULTS / "inits" / f"findings-minilm-small-{k}.json").read_text())
            for k in ("shared-init", "own-inits")}
    shared = readme._same_index_rows(arts["shared-init"]["findings"])
    own = readme._same_index_rows(arts["own-inits"]["findings"])
    assert shared.keys() == own.keys() and "layers (distance 1)" in shared
    for key, (label, x, _) in shared.items():
        assert f"| {label} | {readme._pct(x)} | **{readme._pct(own[key][1])}** |" in text
    assert own["layers (distance 1)"][1] < 0.01 < shared["layers (distance 1)"][1]  # the confound, gone
    assert arts["own-inits"]["command"] in text and "--shared-init" in text
