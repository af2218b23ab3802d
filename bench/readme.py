"""`python -m bench.readme` (make readme-bench): write the README's numbers from their JSON.

The benchmark table comes from the newest `bench/results/bench-*.json` holding each section, the scale
plan's measured sentence from the same stack result, and the findings table from the committed
`bench/results/findings-*.json` (`python -m bench.findings` writes it from an atlas). Each generated block
sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in README.md and names the file it came from,
so every number in the README can be traced to a result file, its commit and its host.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
PLAN_PFLOP = {"gemma-2-2b": 30, "gemma-2-9b": 75}  # the scale plan's GEMM estimate (README table)


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%".replace(".0%", "%") if x < 0.9995 else "100%"


@dataclass
class Row:
    section: str
    label: Callable[[dict], str]
    measured: Callable[[dict], str]
    target: str
    pick: Callable[[object], dict | None] = lambda v: v  # the part of the section this row reads
    met: Callable[[dict], bool] | None = None  # whether the target is met ("(missed)" is added when not)


def _pair_rate(v: dict) -> tuple[float, float]:
    """(seconds per pair, FLOP/s) of the stack section's matching: one A·Bᵀ of an n × n × d pair per pair."""
    per_pair = v["match_s"] / v["pairs"]
    return per_pair, 2.0 * v["d_sae"] ** 2 * v["d_in"] / per_pair


def _stack(v: dict) -> str:
    per_pair, rate = _pair_rate(v)
    return (f"**{v['end_to_end_min']:.1f} min** (ingest {v['ingest_s']:.1f} s = {v['ingest_features_per_s'] / 1e3:.0f}k "
            f"features/s; match {v['match_s']:.0f} s = {per_pair:.1f} s/pair ≈ {rate / 1e9:.0f} GFLOP/s); peak RSS "
            f"{v['peak_rss_mb'] / 1024:.1f} GiB; atlas {v['atlas_mb']:.0f} MB")


def _ray(v: dict) -> str:
    same = v.get("identical_edges", v.get("identical"))
    diff = v.get("max_score_diff")
    return (f"**{v['ray_overhead_ratio']:.2f}×** the in-process wall time ({v['ray_2_workers_s']:.1f} s vs "
            f"{v['in_process_s']:.1f} s = {v['in_process_s'] / v['pairs']:.1f} s/pair in-process, same cores); "
            f"edges {'identical' if same else '**not identical**'}"
            + (f", max \\|Δscore\\| {diff:.1g}" if diff is not None else ""))


def _m(rows: int) -> str:
    return f"{rows / 1e6:.0f}M" if rows >= 1e6 else f"{rows:,}"


def _scale(*need: str):
    """The scale section when its new-layout sizes (and `need`ed parts of the big one) were measured."""
    def pick(v):
        if not isinstance(v, dict) or "big" not in v or "small" not in v:
            return None
        http = v["big"].get("http", {})
        return v if all(k in http for k in need) or (need and "error" in http) else None
    return pick


def _http_row(label: Callable[[dict], str], part: str, fmt: Callable[[dict], str], target: str, met: Callable[[dict], bool]) -> Row:
    """A scale row on the big atlas's HTTP `part`: "not measured" and why where the server stopped before it."""
    def measured(v: dict) -> str:
        h = v["big"]["http"]
        return fmt(v) if part in h else f"not measured: {h['error']}"
    return Row("scale", label, measured, target, _scale(part), lambda v: part in v["big"]["http"] and met(v))


def _scale_publish(v: dict) -> str:
    b, s = v["big"]["publish"], v["small"]["publish"]
    return (f"**{b['job_s']:.2f} s** at {_m(v['big']['match_rows'])} rows (opening the job {b['open_s']:.2f} s, publish "
            f"step {b['publish_s']:.2f} s; DuckDB file {b['duckdb_file_mb']:.0f} MB), {s['job_s']:.2f} s at "
            f"{_m(v['small']['match_rows'])}")


def _http_line(h: dict, endpoint: str) -> str:
    m, o = h[endpoint]["2"], h[endpoint]["8"]
    return (f"p50 **{m['p50_ms']:.1f} ms**, p99 **{m['p99_ms']:.1f} ms**, **{m['req_per_s']:.0f} req/s** "
            f"(8 connections: {o['p50_ms']:.1f} / {o['p99_ms']:.1f} ms, {o['req_per_s']:.0f} req/s; "
            f"client {m.get('client', 'wrk')})")


def _baseline(v: dict, fmt: Callable[[dict], str]) -> str:
    """`fmt` of the same atlas served by the baseline commit (table files read as Parquet), as a clause."""
    h = v["big"].get("http_baseline")
    if not h:
        return ""
    try:
        return f"; the same atlas served by {v.get('baseline_commit')} (Parquet reads, no edge index): " + fmt(h)
    except (KeyError, TypeError):
        return f"; served by {v.get('baseline_commit')}: {h.get('error', 'not measured')}"


def _served_lineage(v: dict) -> str:
    line = [f"{c} connections: lineage p50 {v[c]['lineage']['p50_ms']:.2f} ms = **{v[c]['ratio']:.2f}×** /health's "
            f"{v[c]['health']['p50_ms']:.2f} ms, **{v[c]['lineage']['req_per_s']:.0f} req/s**" for c in ("2", "8")]
    return "; ".join(line) + (f" (client {v['2']['lineage'].get('client')}; load average {v['load_before'][0]:.1f} → "
                              f"{v['load_after'][0]:.1f})")


def _scale_http(endpoint: str):
    def fmt(v: dict) -> str:
        small = v["small"].get("http", {})
        at_small = (f"; at {_m(v['small']['match_rows'])} rows: {_http_line(small, endpoint)}".replace("**", "")
                    if endpoint in small else "")
        return (f"2 connections: {_http_line(v['big']['http'], endpoint)}{at_small}"
                + _baseline(v, lambda h: _http_line(h, endpoint).replace("**", "")))
    return fmt


def _at_2(endpoint: str, p50: float, p99: float = float("inf"), rate: float = 0) -> Callable[[dict], bool]:
    """The issue-25 targets of `endpoint` at 2 connections, every answer a 2xx."""
    def met(v: dict) -> bool:
        m = v["big"]["http"][endpoint]["2"]
        return m["p50_ms"] < p50 and m["p99_ms"] < p99 and m["req_per_s"] >= rate and not m.get("non_2xx")
    return met


def _scale_rss(v: dict) -> str:
    h = v["big"]["http"]
    r = h["lineage_random"]
    cut = (f" of {r['asked']:,} asked (stopped after {r['time_limit_s']:.0f} s at {r['req_per_s']:.0f} req/s)"
           if r.get("asked", r["requests"]) > r["requests"] else "")
    small = v["small"].get("http", {})
    at_small = (f"; at {_m(v['small']['match_rows'])} rows {small['rss_after_lineage_mb'] / 1024:.2f} GB after "
                f"{small['lineage_random']['requests']:,}" if "rss_after_lineage_mb" in small else "")
    kinds = h.get("rss_after_lineage_kinds")
    split = (f": heap **{kinds['anon_mb'] / 1024:.2f} GB**, file-backed pages {kinds['file_mb'] / 1024:.2f} GB (mapped "
             f"edge indexes and libraries: shared, the page cache's to evict)" if kinds else "")
    return (f"**{h['rss_after_lineage_mb'] / 1024:.2f} GB** after {r['requests']:,} random lineages{cut}{split} "
            f"(idle {h['rss_idle_mb'] / 1024:.2f} GB){at_small}"
            + _baseline(v, lambda b: f"{b['rss_after_lineage_mb'] / 1024:.2f} GB after "
                                     f"{b['lineage_random']['requests']:,} (idle {b['rss_idle_mb'] / 1024:.2f} GB"
                                     + (f", heap {b['rss_after_lineage_kinds']['anon_mb'] / 1024:.2f} GB"
                                        if "rss_after_lineage_kinds" in b else "") + ")"))


def _scale_disk(v: dict) -> str:
    d = v["big"]["disk"]
    return (f"**{d['bytes_per_row']:.1f} bytes** per match row in {d['files']:,} table files "
            f"({d['table_files_gb']:.1f} GB, reverse files {d['reverse_files_gb']:.2f} GB of it)"
            + (f"; edge indexes **{d['index_bytes_per_row']:.1f} bytes** per match row ({d['index_gb']:.2f} GB)"
               if "index_bytes_per_row" in d else "")
            + f"; DuckDB file {d['duckdb_file_mb']:.0f} MB")


def _scale_export(v: dict) -> str:
    e = v["big"]["http"]["export"]
    done = "whole table" if e["complete"] else f"first {e['seconds']:.0f} s"
    return (f"**{e['mb_per_s']:.0f} MB/s ({done}, {e['bytes'] / 2**20:,.0f} MB), server RSS {e['rss_before_mb'] / 1024:.2f} "
            f"→ peak {e['peak_rss_mb'] / 1024:.2f} GB" + (f", {e['error']}" if e.get("error") else "") + "**")


def _cofiring_row(want: Callable[[dict], bool]):
    """The 16k row of the cofiring section measured against the bound that `want` accepts."""
    return lambda v: next((r for r in v if r["d_a"] == 16384 and "bound_s" in r and want(r)), None) \
        if isinstance(v, list) else None


def _cofiring_label(v: dict, state: str) -> str:
    budget = f" for a {v['memory_budget_gb']:.0f} GiB memory budget" if "memory_budget_gb" in v and "picks" in state else ""
    return (f"co-firing statistics, synthetic {_k(v['d_a'])} × {_k(v['d_b'])} pair (L0 ≈ {v['l0_a']:.0f}, half of b "
            f"planted), {v['tokens'] // 1000}k tokens, {state}{budget}, vs the sparse bound (one scipy `Aᵀ·B`)")


def _cofiring(v: dict) -> str:
    exact = v.get("state") == "exact"
    kept = ("all kept (exact, Θ = 0)" if exact else
            f"{v['pairs_kept'] / 1e6:.0f}M kept after {v['prunes']} prunes (Θ = {v['error_bound']:.3f})")
    return (f"{v.get('state', 'capped')}: **{v['ratio_vs_bound']:.2f}×** the bound in CPU time ({v['cpu_s']:.1f} s vs "
            f"{v['bound_cpu_s']:.1f} s; wall {v['wall_ratio_vs_bound']:.1f}×), peak RSS **{v['peak_mb'] / 1024:.2f} GB** "
            f"(bound {v['bound_peak_mb'] / 1024:.2f} GB); {v['bound_pairs'] / 1e6:.1f}M co-firing pairs, {kept}; top-16 "
            f"recall on {v['sample_features']} sampled features **{v['recall_top16']:.3f}** "
            f"({v['recall_top16_r_ge_0.1']:.3f} for r ≥ 0.1), planted top-1 {_pct(v['planted_top1'])}; top-k "
            + (f"{v['topk_cpu_s']:.1f} CPU-s" if "topk_cpu_s" in v else f"{v['topk_s']:.1f} s"))


def _cofiring_met(v: dict) -> bool:
    return v["ratio_vs_bound"] <= 1.3 and v["recall_top16"] >= 0.95


def _match_one(v: dict) -> str:
    return (f"a job of a kept shape **{v['known_vs_candidates']:.2f}×** the candidate search in CPU time "
            f"({v['known_job_cpu_s']:.1f} s vs {v['candidates_cpu_s']:.1f} s; wall {v['known_job_s']:.0f} s vs "
            f"{v['candidates_s']:.0f} s); the first job of its shape, which computes PW-MCC's random baseline "
            f"({v['baseline_s']:.1f} s) and keeps it: {v['first_vs_candidates']:.2f}× ({v['first_job_cpu_s']:.1f} s)")


def _scale_sql(v: dict) -> str:
    def line(q: dict) -> str:
        return (f"p50 **{q['lineage_edges_p50_ms']:.0f} ms = {q['ratio']:.1f}×** the served lineage "
                f"({q['served_lineage_p50_ms']:.1f} ms), same edges {q['same_edges']}/{q['features']}; "
                f"`lineage_nodes` {q['lineage_nodes_p50_ms']:.0f} ms; the macro of {q['before_commit']}: "
                f"{q['lineage_edges_before_p50_ms']:.0f} ms = {q['ratio_before']:.0f}×; a point lookup by (sae, "
                f"feature): `matches` {q['point_matches_p50_ms']:.1f} ms, `matches_by_b` "
                f"{q['point_matches_by_b_p50_ms']:.1f} ms")
    small = v["small"].get("sql")
    return line(v["big"]["sql"]) + (f"; at {_m(v['small']['match_rows'])} rows: " + line(small).replace("**", "")
                                     if small else "")


def _pwmcc(v: list) -> str:
    """Per size, the largest gap of the sparse PW-MCC below the exact one (bench/pwmcc.py)."""
    worst = {n: min(r["deviation"] for r in v if r["n"] == n) for n in sorted({r["n"] for r in v})}
    big = max(worst)
    seed = next(r for r in v if r["n"] == big and r["shared"] == 0.7)
    return (" · ".join(f"{_k(n)}: **{d:+.1e}**" for n, d in worst.items())
            + f" (the largest gap over seed siblings, dataset siblings and random pairs; {_k(big)} seed siblings "
              f"{seed['pw_mcc_sparse']:.4f} vs {seed['pw_mcc_dense']:.4f}, sparse {seed['sparse_s']:.1f} s vs dense "
              f"{seed['dense_s']:.0f} s)")


ROWS = [
    Row("candidates", lambda v: f"candidates, {_k(v['n'])} × {_k(v['n'])} × {v['d']}, both directions, vs one bare "
        "`torch.matmul`",
        lambda v: f"**{v['ratio_vs_matmul']:.2f}×** ({v['topk_both_dirs_s']:.2f} s vs {v['matmul_s']:.2f} s; FAISS flat, "
                  f"one direction: {v['faiss_flat_one_dir_s']:.1f} s)", "≤ 1.5×",
        met=lambda v: v["ratio_vs_matmul"] <= 1.5),
    Row("assignment", lambda v: f"sparse assignment vs dense `linear_sum_assignment`, {_k(v['n'])}",
        lambda v: f"**{v['speedup']:.0f}×** faster, {_pct(v['identical_at_score_0.5'])} identical pairs (score ≥ 0.5)",
        "", lambda v: v[0] if isinstance(v, list) and v else None),
    Row("assignment", lambda v: f"sparse assignment vs dense `linear_sum_assignment`, {_k(v['n'])}",
        lambda v: f"**{v['speedup']:.0f}×** faster ({v['sparse_s']:.3f} s vs {v['dense_lsa_s']:.1f} s), "
                  f"{_pct(v['identical_at_score_0.5'])} identical", "≥ 20×, ≥ 99.9%",
        lambda v: v[1] if isinstance(v, list) and len(v) > 1 else None,
        lambda v: v["speedup"] >= 20 and v["identical_at_score_0.5"] >= 0.999),
    Row("pwmcc", lambda v: f"PW-MCC over the candidate graph (k = {v[0]['k']}) vs the exact dense assignment, "
        f"synthetic pairs, d_in {v[0]['d_in']}", _pwmcc, "≥ −1e-4 (never above)",
        lambda v: v if isinstance(v, list) and v and "deviation" in v[0] else None,
        lambda v: all(-1e-4 <= r["deviation"] <= 1e-6 for r in v)),
    Row("stack", lambda v: f"{v['layers']} layers × {_k(v['d_sae'])} × {v['d_in']} synthetic stack, adjacent + "
        f"distance-2 ({v['pairs']} pairs), ingest + match", _stack, "< 15 min",
        met=lambda v: v["end_to_end_min"] < 15),
    Row("correlation", lambda v: f"co-firing statistics, {v['tokens'] // 1000}k tokens × {v['d_sae']} features "
        f"({100 * v['density']:.1f}% density), vs dense `torch.corrcoef`",
        lambda v: f"**{v['speedup']:.1f}×** faster, {'identical' if v['identical_top16'] == 1 else _pct(v['identical_top16'])} "
                  f"top-16, max \\|Δr\\| {v.get('max_abs_r_diff_top16', v.get('max_abs_diff')):.1e}", "≥ 10×",
        lambda v: v if isinstance(v, dict) and "speedup" in v else None, lambda v: v["speedup"] >= 10),
    Row("cofiring", lambda v: _cofiring_label(v, "the state `new_state` picks"), _cofiring, "≤ 1.3×, top-16 recall ≥ 0.95",
        _cofiring_row(lambda r: r.get("state") is not None and r["tokens"] < 1_000_000), _cofiring_met),
    Row("cofiring", lambda v: _cofiring_label(v, "the state `new_state` picks"), _cofiring,
        "≤ 1.3×, top-16 recall ≥ 0.95 (at 1M tokens)",
        _cofiring_row(lambda r: r.get("state") is not None and r["state"] != "capped" and r["tokens"] >= 1_000_000),
        _cofiring_met),
    Row("cofiring", lambda v: _cofiring_label(v, "the capped sparse state (what a pair past the memory budget gets)"),
        _cofiring, "", _cofiring_row(lambda r: r.get("state", "capped") == "capped")),
    Row("cofiring", lambda v: f"co-firing statistics, synthetic {_k(v['d_a'])} × {_k(v['d_b'])} pair, "
        f"{v['tokens'] // 1000}k tokens", lambda v: f"ran to the end, peak RSS **{v['peak_mb'] / 1024:.2f} GB**; "
        f"{v.get('state', 'capped')} state ({v['pairs_kept'] / 1e6:.0f}M pairs kept, Θ = {v['error_bound']:.3f}); "
        f"top-16 recall {v['recall_top16']:.3f} ({v['recall_top16_r_ge_0.1']:.3f} for r ≥ 0.1)", "≤ 4 GB",
        lambda v: next((r for r in v if r["d_a"] >= 65536), None) if isinstance(v, list) else None,
        lambda v: v["peak_mb"] <= 4096),
    Row("stack-activations", lambda v: f"one pass on {v['device']}: Gemma-2-2B-shaped model (random weights), "
        f"{v['layers']} × {_k(v['d_sae'])} SAEs, {v['pairs']} adjacent pairs, {v['tokens'] // 1000}k tokens",
        lambda v: f"**{v['seconds'] / 60:.1f} min** ({v['tokens_per_s']:,.0f} tokens/s; forward {_pct(v['forward_share'])}, "
                  f"encode {_pct(v['encode_share'])}, statistics {_pct(v['statistics_share'])}, top-k "
                  f"{_pct(v['topk_share'])}); {v['dense_pairs']} dense pairs", "≤ 10 min on one GPU",
        lambda v: v if isinstance(v, dict) and not v.get("smoke") else None, lambda v: v["seconds"] <= 600),
    Row("match-one", lambda v: f"one `atlas match` job of one {_k(v['d_sae'])} × {v['d_in']} pair (decoder_cos: "
        "candidates, assignment, PW-MCC, MMCS) vs one bare candidate search of the same decoders", _match_one,
        "≤ 1.5× (a kept shape)", met=lambda v: v["known_vs_candidates"] <= 1.5),
    Row("ray", lambda v: f"Ray: matching the {v['layers']} × {_k(v['d_sae'])} × {v['d_in']} stack ({v['pairs']} pairs) "
        "on a local 2-worker Ray cluster vs in-process", _ray, "≤ 1.3×",
        met=lambda v: v["ray_overhead_ratio"] <= 1.3 and v.get("identical_edges", v.get("identical")) is True),
    Row("scale", lambda v: f"scale: a job adding one pair-method to a synthetic atlas of {_m(v['big']['match_rows'])} "
        f"match rows ({v['big']['pairs']} pair-methods of {_k(v['big']['shape']['d_sae'])} × {v['k']}), table files",
        _scale_publish, "≤ 1 s, independent of size", _scale(),
        lambda v: v["big"]["publish"]["job_s"] <= 1 and v["small"]["publish"]["job_s"] <= 1),
    _http_row(lambda v: f"scale: lineage of random features of the {_m(v['big']['match_rows'])}-row atlas, "
              "`atlas serve --workers 2`, loopback", "lineage", _scale_http("lineage"),
              "p50 < 5, p99 < 25 ms, ≥ 1000 req/s at 2 connections", _at_2("lineage", 5, 25, 1000)),
    _http_row(lambda v: "scale: same, feature card", "feature_card", _scale_http("feature_card"), "p50 < 2 ms",
              _at_2("feature_card", 2)),
    _http_row(lambda v: "scale: server RSS (all its processes)", "rss_after_lineage_mb", _scale_rss, "≤ 1 GB after 10,000 lineages",
              lambda v: v["big"]["http"]["rss_after_lineage_mb"] <= 1024
              and v["big"]["http"]["lineage_random"]["requests"] >= 10_000),
    Row("scale", lambda v: f"scale: `lineage_edges` by SQL on the {_m(v['big']['match_rows'])}-row atlas (one "
        "read-only connection, random features) vs the served lineage (the server's code on the same connection)",
        _scale_sql, "≤ 20×", lambda v: v if _scale()(v) and "sql" in v["big"] else None,
        lambda v: v["big"]["sql"]["ratio"] <= 20 and v["big"]["sql"]["same_edges"] == v["big"]["sql"]["features"]),
    Row("scale", lambda v: "scale: bytes on disk", _scale_disk, "", _scale()),
    _http_row(lambda v: "scale: `GET /api/export/matches.parquet`", "export", _scale_export, "flat memory",
              lambda v: (e := v["big"]["http"]["export"])["peak_rss_mb"] - e["rss_before_mb"] < 512 and e["status"] == 200),
    Row("lineage", lambda v: f"served lineage vs `/health` on one server (`atlas serve --workers 2`, random features of "
        f"a {_m(v['match_rows'])}-row atlas, loopback)", _served_lineage, "p50 ≤ 4× /health's; ≥ 1000 req/s",
        met=lambda v: v["2"]["ratio"] <= 4 and v["best_req_per_s"] >= 1000),
    Row("lineage", lambda v: "notebook lineage (`atlas.open`, in-process) vs the served lineage, same features",
        lambda v: f"p50 **{v['notebook']['p50_ms']:.2f} ms** = **{v['notebook_vs_served']:.2f}×** the served p50",
        "≤ 1.5×", met=lambda v: v["notebook_vs_served"] <= 1.5),
]


def newest(section: str, pick=lambda v: v, results: Path = RESULTS) -> tuple[Path, dict, dict] | None:
    """(file, value, meta) of the newest result file holding `section` in a shape `pick` accepts."""
    for path in sorted(results.glob("bench-*.json"), reverse=True):  # names sort by time
        data = json.loads(path.read_text())
        if section in data and (value := pick(data[section])) is not None:
            return path, value, data.get("meta", {})
    return None


def _host(meta: dict) -> str:
    h = meta.get("host")
    if not h:
        return "host not recorded"
    gpu = f", {h['gpu']}" if h.get("gpu") else ", no GPU"
    commit = (meta.get("commit") or "?")[:9] + (" + local changes" if meta.get("dirty") else "")
    return f"{h['cores']} cores {h['cpu']}, {h['memory_gb']:.0f} GB{gpu}; commit {commit}"


def bench_table(results: Path = RESULTS) -> str:
    lines = ["| benchmark | measured | target | result file (host, commit) |", "|---|---|---|---|"]
    for row in ROWS:
        found = newest(row.section, row.pick, results)
        if found is None:
            continue
        path, value, meta = found
        target = row.target + (" (missed)" if row.met is not None and not row.met(value) else "")
        lines.append(f"| {row.label(value)} | {row.measured(value)} | {target} | "
                     f"`{path.name}` ({_host(meta)}) |")
    return "\n".join(lines)


def plan_sentence(results: Path = RESULTS) -> str:
    found = newest("stack", results=results)
    if found is None:
        return "No stack benchmark has run yet."
    path, v, meta = found
    per_pair, rate = _pair_rate(v)
    days = sum(PLAN_PFLOP.values()) * 1e15 / rate / 86400
    cores = meta.get("host", {}).get("cores")
    where = f"{cores} CPU cores" if cores else "host not recorded"
    return (f"Measured here ({where}, `{path.name}`): a {_k(v['d_sae'])} × {_k(v['d_sae'])} × {v['d_in']} "
            f"pair takes {per_pair:.1f} s (≈ {rate / 1e9:.0f} GFLOP/s), so the two models would take ≈ {days:.0f} days "
            f"on this machine. The bench stack's atlas holds {v['atlas_mb']:.0f} MB for its {v['pairs']} pairs "
            f"(≈ {v['atlas_mb'] / v['pairs']:.1f} MB per {_k(v['d_sae'])} pair).")


def _held(r: dict) -> str:
    """One edge kind's ablation check: share held of those tested (median drop)."""
    held = "n/a" if r["held_frac"] is None else _pct(r["held_frac"])
    med = "n/a" if r["median_drop"] is None else f"{r['median_drop']:.2f}"
    return f"{r['kind']} {held} of {r['tested']} ({med})"


def _finding_rows(art: dict) -> list[tuple[str, str]]:
    """(finding, measured) rows of one `atlas findings --json` artifact."""
    f = art["findings"]
    dist = {r["distance"]: r for r in f["distance"]}
    sib = {r["relation"]: r for r in f["siblings"]}
    agree = f["agreement"]
    same = sum(r["same_partner"] * r["both_assigned"] for r in agree) / max(sum(r["both_assigned"] for r in agree), 1)
    comps = f["composition_counts"]
    ev = dist.get(1, {}).get("explained_variance")
    rows = [
        ("nearby layers share more features (decoder cosine ≥ 0.7 after assignment, "
         f"stacks `{art['args']['stack']}`)", " · ".join(
             (f"distance {d}: **{_pct(r['matched_frac'])}**" if d == 1 else f"{d}: {_pct(r['matched_frac'])}")
             for d, r in sorted(dist.items()))),
        ("… and the MSE after permutation grows with distance",
         " → ".join(f"{r['mse_after_perm']:.1e}" for _, r in sorted(dist.items()))),
    ]
    if ev is not None:
        rows.append(("encode(l) → permute → decode(l+1) explains layer l+1", f"{_pct(ev)} of its variance (adjacent layers)"))
    if "seed" in sib and "dataset" in sib:
        rows.append(("seed siblings share more than dataset siblings (same layer)",
                     f"decoder matched {_pct(sib['seed']['decoder_matched_frac'])} vs "
                     f"{_pct(sib['dataset']['decoder_matched_frac'])}; shared by the Paulo & Belrose rule "
                     f"**{_pct(sib['seed']['shared_frac'])} vs {_pct(sib['dataset']['shared_frac'])}**"))
    if agree:
        rows.append(("weight and activation matching agree", "decoder-cosine and activation-correlation assignments "
                     f"pick the same partner for {_pct(same)} of features"))
    for r in f.get("widths", []):
        split = "" if r["mean_split_children"] is None else (
            f" (into {r['mean_split_children']:.1f} on average; best non-negative combination of the children: "
            f"cosine {r['mean_split_combo_cos']:.2f})")
        dup = f", {r['duplicate']} duplicate (near-copy children)" if "duplicate" in r else ""
        rows.append((f"features split as the dictionary grows (layer {r['layer']}, {r['d_a']} → {r['d_b']})",
                     f"{r['kept']} kept, **{r['split']} split**{split}{dup}, {r['absent']} absent"))
    rows += _consistency_rows(f.get("consistency", []))
    shape = f.get("lineage_shape")
    if shape:
        a, d = shape["all"], shape["default"]
        rows.append((f"lineages over {a['features']} features of `{art['args'].get('lineage_of')}` with more than 20 nodes: "
                     "every candidate → carry/split/merge", f"{_pct(a['over_big'])} → **{_pct(d['over_big'])}**"))
        rows.append(("… and the share of their edges outside the assignment",
                     f"{_pct(a['unassigned_edges'])} → **{_pct(d['unassigned_edges'])}**"))
    by_distance: dict[int, list] = {}
    for r in f.get("ablation", []):  # atlas check-edges (docs/design.md, Edges under ablation)
        by_distance.setdefault(r["distance"], []).append(r)
    for d, rs in sorted(by_distance.items()):
        n = max(r["n"] // r["pairs"] for r in rs if r["kind"] != "random")
        rows.append((f"edges that hold under ablation, layer distance {d} (child drops beyond its pair's random "
                     f"pairs' 95th percentile; median drop; up to {n} edges sampled per pair and kind)",
                     " · ".join(_held(r) for r in rs)))
    rows.append(("compositions (layer l → l+1)", ", ".join(f"{comps.get(k, 0)} {name}" for k, name in
                                                          (("PASS", "pass-through"), ("OR", "OR"), ("AND", "AND")))))
    return rows


def _same_index_rows(f: dict) -> dict[str, tuple[str, float, float]]:
    """Pair kind -> (label, same-index share, chance) of one artifact's `same_index` (docs/design.md, Independent inits)."""
    out = {}
    for r in f.get("same_index") or []:
        label = r["kind"] + (f" (distance {r['distance']})" if r["distance"] is not None else "")
        out[label] = (label, r["same_index"], r["chance"])
    return out


def _family(art: dict) -> str:
    p = art["atlas"]
    return f"an atlas of {p['n_saes']} SAEs: {p['summary']}; commit {(art.get('commit') or '?')[:9]}"


def findings_table(results: Path = RESULTS) -> str:
    files = sorted(results.glob("findings-*.json"), reverse=True)
    if not files:
        return ("No findings artifact in `bench/results/` yet: build the default family (`make demo`), then "
                "`make findings` (it keeps `atlas findings --json` with the SAEs it measured) and `make readme-bench`.")
    path = files[0]
    art = json.loads(path.read_text())
    f = art["findings"]
    rows = _finding_rows(art)
    head = (f"From `{path.name}` (`{art['command']}` on the MiniLM family `atlas minilm` builds by default, as "
            f"`make demo` runs it: {_family(art)}"
            + ("; its SAEs were trained before independent inits: every SAE of a seed from one initialisation, as "
               "`atlas minilm --shared-init` does now, so read it beside the control below" if not f.get("same_index") else "")
            + "):\n\n")
    table = head + "| finding | measured |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    example = next((c for c in f.get("compositions", []) if c["child_context"]), None)
    if example:
        parents = "; ".join(f"*{lines[0]}*" for lines in example["parent_contexts"].values() if lines)
        table += (f"\n\nAn {example['kind']} example (`{example['sae_a']}` → `{example['sae_b']}` feature "
                  f"{example['feature_b']}, Jaccard {example['score']:.2f}): the child fires on "
                  f"*{example['child_context'][0]}*; its parents on {parents}.")
    return table


def family_sentence(results: Path = RESULTS) -> str:
    """The README's build time of the MiniLM family: the newest `python -m bench.family` run, and what its
    per-step times scale to at the default budgets (activations with tokens, training with samples)."""
    files = sorted(results.glob("family-*.json"), reverse=True)
    if not files:
        return "No family build has been timed yet: `python -m bench.family`."
    data = json.loads(files[0].read_text())
    v, meta, st = data["family"], data["meta"], data["family"]["steps_s"]
    p, d = v["plan"], v["default_plan"]
    act, train, corr = st.get("activations", 0.0), st.get("SAEs", 0.0), st.get("correlations", 0.0)
    rest = v["total_s"] - act - train - corr
    corr_x = min(p["corr_tokens"] or d["max_tokens"], d["max_tokens"]) / min(p["corr_tokens"] or p["max_tokens"], p["max_tokens"])
    scaled = act * d["max_tokens"] / p["max_tokens"] + train * d["samples"] / p["samples"] + corr * corr_x + rest
    return (f"Measured (`{files[0].name}`, {_host(meta)}; load average {v['load_avg_before'][0]:.0f} → "
            f"{v['load_avg_after'][0]:.0f}): the default family's {p['saes']} SAEs at {p['max_tokens'] // 1000}k tokens "
            f"per corpus and {p['samples'] // 1000}k samples each, from a cold cache, took **{v['total_s'] / 60:.1f} min**: "
            f"activations {act:.0f} s, SAE training {train:.0f} s ({v['training_samples_per_s'] / 1e3:.1f}k samples/s), "
            + ", ".join(f"{k} {st[k]:.0f} s" for k in ("widths", "matches", "correlations") if k in st)
            + f". Scaled to the default budgets ({d['max_tokens'] // 1000}k tokens, {d['samples'] // 1000}k samples: "
            f"activations × {d['max_tokens'] / p['max_tokens']:.0f}, training × {d['samples'] / p['samples']:.0f}, "
            f"correlations × {corr_x:.1f} with their tokens, the rest as measured) that is ≈ **{scaled / 60:.0f} min** at "
            "that load; the machine's load sets the training rate (here against 3.2k–5.8k samples/s in the run above).")


INITS = RESULTS / "inits"


def inits_table(results: Path = RESULTS) -> str:
    """Shared init → own inits on one small family (bench/results/inits/README.md): the same-index share of each
    pair kind beside chance, then every finding that both artifacts hold, side by side."""
    folder = results / "inits"
    try:
        shared, own = (json.loads((folder / f"findings-minilm-small-{k}.json").read_text()) for k in ("shared-init", "own-inits"))
    except FileNotFoundError:
        return "No init comparison in `bench/results/inits/` yet."
    s_idx, o_idx = _same_index_rows(shared["findings"]), _same_index_rows(own["findings"])
    lines = [f"From `inits/findings-minilm-small-shared-init.json` and `inits/findings-minilm-small-own-inits.json` "
             f"(`{own['command']}` on {_family(own)}; the family built by `atlas minilm --max-tokens 60000 --samples "
             f"300000`, once with `--shared-init` (commit {(shared.get('commit') or '?')[:9]}) and once with each SAE's "
             "own init; bench/results/inits/README.md):", "",
             "| pair kind | same index, shared init | same index, own inits | chance |", "|---|---|---|---|"]
    for key, (label, x, chance) in s_idx.items():
        if key in o_idx:
            lines.append(f"| {label} | {_pct(x)} | **{_pct(o_idx[key][1])}** | {100 * chance:.2f}% |")
    lines += ["", "| finding (same family) | shared init | own inits |", "|---|---|---|"]
    mine = dict(_finding_rows(own))
    for label, measured in _finding_rows(shared):
        if label in mine and mine[label] != measured:
            lines.append(f"| {label} | {measured.replace('**', '')} | {mine[label].replace('**', '')} |")
    return "\n".join(lines)


def _consistency_rows(rows: list[dict]) -> list[tuple[str, str]]:
    """PW-MCC and MMCS of the sibling pairs, each beside its random baseline. Artifacts from before schema 6
    stored MMCS under the name pw_mcc (and no mmcs): read them as MMCS."""
    if not rows:
        return []
    if all("mmcs" not in r for r in rows):
        rows = [dict(r, mmcs=r["pw_mcc"], mmcs_random=r["pw_mcc_random"], pw_mcc=None) for r in rows]
    out = []
    for key, what in (("pw_mcc", "PW-MCC (mean decoder cosine of one one-to-one assignment of all features, Song et al. 2025)"),
                      ("mmcs", "MMCS (mean best \\|decoder cosine\\| in the other SAE, both ways, Sharkey et al. 2022)")):
        by = {}
        for r in rows:
            if r[key] is not None:
                by.setdefault(r["relation"], []).append(r)
        measured = " · ".join(f"{rel} siblings {sum(x[key] for x in v) / len(v):.3f} "
                              f"(random {sum(x[key + '_random'] for x in v) / len(v):.3f})" for rel, v in sorted(by.items()))
        out.append((f"seed consistency: {what}; random decoders of the same shape",
                    measured or "not in this artifact (measured from schema 6 on: `make findings`)"))
    return out


def scale_sentence(results: Path = RESULTS) -> str:
    """The README's scale paragraph: the table-file layout's measured size and publish cost, from the scale section."""
    found = newest("scale", _scale(), results)
    if found is None:
        return "No scale benchmark has run yet: `python -m bench scale`."
    path, v, meta = found
    b, s, d = v["big"], v["small"], v["big"]["disk"]
    text = (f"Measured (`{path.name}`, {_host(meta)}): a synthetic atlas of {_m(b['match_rows'])} match rows "
            f"({b['pairs']} pair-methods, {b['saes']} SAEs of {_k(b['shape']['d_sae'])} features) takes "
            f"{d['table_files_gb']:.1f} GB of table files ({d['bytes_per_row']:.1f} bytes per row, reverse files "
            f"included) beside a {d['duckdb_file_mb']:.0f} MB DuckDB file"
            + (f", and {d['index_gb']:.1f} GB of edge indexes ({d['index_bytes_per_row']:.1f} bytes per row)"
               if "index_gb" in d else "")
            + f"; a job adding one pair-method (its edge index written) takes "
            f"{b['publish']['job_s']:.2f} s there and {s['publish']['job_s']:.2f} s at {_m(s['match_rows'])} rows")
    h = b.get("http", {})
    if "rss_after_lineage_mb" in h:
        text += (f". Served with `--workers 2`, its processes hold {h['rss_after_lineage_mb'] / 1024:.2f} GB after "
                 f"{h['lineage_random']['requests']:,} random lineages")
    return text + ". The benchmark table above has the rest (`python -m bench scale`)."


BLOCKS = {"bench-table": bench_table, "bench-plan": plan_sentence, "bench-scale": scale_sentence,
          "findings": findings_table, "inits": inits_table, "family": family_sentence}


def render(text: str, results: Path = RESULTS) -> str:
    """README text with every generated block it holds rewritten from the result files."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->", re.S)
        if not pattern.search(text):
            continue
        block = f"<!-- {name}:start -->\n{make(results)}\n<!-- {name}:end -->"
        text = pattern.sub(lambda _: block, text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="Exit 1 if README.md differs from what the results give.")
    args = p.parse_args(argv)
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md is stale: run `make readme-bench`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
