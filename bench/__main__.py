"""`python -m bench [section ...]`: candidates, assignment, correlation, cofiring, stack, match-one, api, ray, scale,
lineage; pwmcc on request. Prints a table, writes JSON.

Each section measures the thing and its baseline in the same run, so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import correlation, lineage, match_one, pwmcc, readme, record, scale
from bench.load import CLIENTS
from bench.timing import timed

RESULTS = Path(__file__).parent / "results"


def bench_candidates(n: int, d: int) -> dict:
    import faiss
    import torch

    from atlas.match.candidates import topk_both
    from atlas.synth import unit

    rng = np.random.default_rng(0)
    a = unit(rng.standard_normal((n, d), dtype=np.float32))
    b = unit(a[rng.permutation(n)] + 0.3 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t_mm, _ = timed(lambda: ta @ tb.T, repeat=2)
    t_ours, _ = timed(lambda: topk_both(a, b, 16), repeat=2)
    index = faiss.IndexFlatIP(d)
    index.add(b)
    t_faiss, _ = timed(lambda: index.search(a, 16), repeat=2)
    return {"n": n, "d": d, "matmul_s": t_mm, "topk_both_dirs_s": t_ours, "faiss_flat_one_dir_s": t_faiss,
            "ratio_vs_matmul": t_ours / t_mm, "target": "<= 1.5"}


def bench_assignment(n: int) -> dict:
    from scipy.optimize import linear_sum_assignment

    from atlas.match.assign import assign_sparse
    from atlas.match.candidates import edges as _edges
    from atlas.match.candidates import topk_both
    from atlas.synth import unit

    rng = np.random.default_rng(1)
    d = 256
    a = unit(rng.standard_normal((n, d), dtype=np.float32))
    perm = rng.permutation(n)
    b = unit(a[perm] + 0.4 * rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d))
    b[: n // 10] = unit(rng.standard_normal((n // 10, d), dtype=np.float32))  # births
    s = (a @ b.T).astype(np.float64)
    t_dense, (dr, dc) = timed(lambda: linear_sum_assignment(s, maximize=True))
    cand = topk_both(a, b, 16)

    def sparse():
        fa, fb, sc = _edges(cand)
        return assign_sparse(fa, fb, sc - 0.3, n, n)

    t_sparse, (sr, sc_) = timed(sparse)
    dense_pairs = {(i, j) for i, j in zip(dr.tolist(), dc.tolist()) if s[i, j] >= 0.5}
    sparse_pairs = {(i, j) for i, j in zip(sr.tolist(), sc_.tolist()) if s[i, j] >= 0.5}
    same = len(dense_pairs & sparse_pairs) / max(len(dense_pairs), 1)
    return {"n": n, "dense_lsa_s": t_dense, "sparse_s": t_sparse, "speedup": t_dense / t_sparse,
            "identical_at_score_0.5": same, "target": ">= 20x at 16k, >= 0.999 identical"}


def _family(layers: int, d_sae: int, d_in: int, folder: Path) -> list[Path]:
    """A synthetic stack of `layers` SAEs (one seed, one dataset) written under `folder`."""
    from atlas.synth import SynthConfig, generate

    return generate(SynthConfig(d_in=d_in, d_sae=d_sae, n_layers=layers, n_seeds=1, second_dataset=False), folder)


def _ingested(path: Path, folders: list[Path]):
    """(the atlas at `path` holding the SAEs of `folders`, the ingest summary, its adjacent + distance-2 pairs)."""
    from atlas.queries.selection import select_pairs
    from atlas.store import Atlas
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.sources import read_sae

    atlas = Atlas(path)
    summary = ingest(atlas, [lambda f=f: read_sae(f) for f in folders])
    with atlas.read() as con:
        return atlas, summary, select_pairs(con, "distance", distance=2)


def bench_stack(layers: int, d_sae: int, d_in: int, workdir: Path) -> dict:
    from atlas.match.params import MatchParams
    from atlas_ingest.jobs.match import run_match

    t_gen, folders = timed(lambda: _family(layers, d_sae, d_in, workdir / "family"))
    t_ingest, (atlas, summary, pairs) = timed(lambda: _ingested(workdir / "bench.duckdb", folders))
    t_match, _ = timed(lambda: run_match(atlas, pairs, ["decoder_cos"], MatchParams(), publish_every=600))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"layers": layers, "d_sae": d_sae, "d_in": d_in, "pairs": len(pairs), "generate_s": t_gen,
            "ingest_s": t_ingest, "ingest_features_per_s": summary.features / t_ingest,
            "match_s": t_match, "end_to_end_min": (t_ingest + t_match) / 60, "peak_rss_mb": peak,
            "atlas_mb": atlas.path.stat().st_size / 2**20, "target": "< 15 min on 2 cores"}


def bench_ray(layers: int, d_sae: int, d_in: int, workdir: Path) -> dict:
    """The same 26-layer stack matched in-process and on a local 2-worker Ray cluster."""
    from atlas.match.params import MatchParams
    from atlas_ingest.executors import RayExecutor
    from atlas_ingest.jobs.match import run_match

    folders = _family(layers, d_sae, d_in, workdir / "ray-family")
    atlases = {}
    for name in ("in-process", "ray"):
        atlases[name], _, pairs = _ingested(workdir / f"ray-{name}.duckdb", folders)
    t_local, _ = timed(lambda: run_match(atlases["in-process"], pairs, ["decoder_cos"], MatchParams()))
    ex = RayExecutor(num_cpus=2)
    try:
        t_ray, summary = timed(lambda: run_match(atlases["ray"], pairs, ["decoder_cos"], MatchParams(), executor=ex))
    finally:
        ex.close()
    # BLAS sums in another order with 1 thread per Ray task than with 2 in-process: compare edges exactly,
    # scores to float32 rounding
    q = "SELECT sae_a, feature_a, sae_b, feature_b, rank, assigned, score FROM matches ORDER BY ALL"
    with atlases["in-process"].read() as a, atlases["ray"].read() as b:
        ra, rb = a.execute(q).fetchall(), b.execute(q).fetchall()
    same = len(ra) == len(rb) and all(x[:6] == y[:6] for x, y in zip(ra, rb))
    score_diff = max((abs(x[6] - y[6]) for x, y in zip(ra, rb)), default=0.0)
    per_pair = t_local / len(pairs)
    return {"layers": layers, "d_sae": d_sae, "d_in": d_in, "pairs": len(pairs), "in_process_s": t_local,
            "ray_2_workers_s": t_ray, "ray_overhead_ratio": t_ray / t_local, "identical_edges": same,
            "max_score_diff": score_diff,
            "in_process_s_per_pair": per_pair, "ray_report": summary.report(), "target": "ray <= 1.3x in-process"}


def bench_api(atlas_path: Path, seconds: int = 10, client: str = "auto") -> dict:
    """Feature card and lineage under load on loopback: `atlas serve --workers 2`, bounded in time."""
    from bench.server import serving

    with serving(atlas_path, "--workers", "2") as server:
        out = scale.card_and_lineage(server.base, scale.random_features(atlas_path, 500, 0), seconds, client)
    return dict(out, target="p50 < 10 ms, p99 < 50 ms, >= 500 req/s")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("sections", nargs="*", default=["candidates", "assignment", *correlation.SECTIONS, "stack", "match-one",
                                                  "api", "ray", "scale", "lineage"])
    p.add_argument("--corr-tokens", type=int, default=1_000_000, help="Tokens of the cofiring section's pairs.")
    p.add_argument("--layers", type=int, default=26)
    p.add_argument("--d-sae", type=int, default=16384)
    p.add_argument("--d-in", type=int, default=2304)
    p.add_argument("--load-client", choices=CLIENTS, default="auto",
                   help="HTTP load of the api and scale sections: wrk (`make wrk`), a Python client, or auto (wrk if installed).")
    p.add_argument("--workdir", type=Path, default=None, help="Keep the synthetic stack and atlas here.")
    p.add_argument("--results", type=Path, default=RESULTS, help="Write the result JSON into this folder.")
    scale.add_arguments(p)
    p.add_argument("--lineage-atlas", type=Path, default=None,
                   help="Atlas of the lineage section [default: the scale section's big atlas, else the stack's].")
    args = p.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"meta": record.metadata(vars(args))}  # commit, host, versions, parameters (bench/record.py)
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"

    def save(section, value):  # after every section, so a crash later keeps what was measured
        results[section] = value
        out.write_text(json.dumps(results, indent=1))
    if "candidates" in args.sections:
        save("candidates", bench_candidates(args.d_sae, args.d_in))
    if "assignment" in args.sections:
        save("assignment", [bench_assignment(n) for n in (4096, args.d_sae)])
    correlation.run(args.sections, save, tokens=args.corr_tokens)
    if "stack" in args.sections:
        save("stack", bench_stack(args.layers, args.d_sae, args.d_in, work))
    if "match-one" in args.sections:
        save("match-one", match_one.run(work, args.d_sae, args.d_in))
    if "ray" in args.sections:
        save("ray", bench_ray(args.layers, 4096, args.d_in, work))
    if "api" in args.sections:
        atlas = work / "bench.duckdb"
        if not atlas.exists():
            raise SystemExit(f"section api needs the stack atlas at {atlas}: run the stack section first")
        save("api", bench_api(atlas, client=args.load_client))
    if "scale" in args.sections:
        save("scale", scale.run(args, log=lambda line: print(line, flush=True)))
    if "lineage" in args.sections:
        big = scale.Shape(args.rows, args.scale_d_sae, args.scale_layers)
        built = Path(args.scale_dir) / f"new-{big.key}" / "atlas.duckdb"
        path = args.lineage_atlas or (built if built.exists() else work / "bench.duckdb")
        if not path.exists():
            raise SystemExit("section lineage needs an atlas: --lineage-atlas, the scale section's or the stack's")
        save("lineage", lineage.run(path, work, args.seconds, args.load_client, log=lambda line: print(line, flush=True)))
    if "pwmcc" in args.sections:  # not in the default list: about 4 minutes of dense 16k assignments
        save("pwmcc", pwmcc.run(log=lambda line: print(line, flush=True)))
    for section, value in list(results.items())[1:]:  # after meta
        if section == "scale":  # nested: printed as its README rows
            print("\n== scale", *(f"  {r.label(value)}: {r.measured(value)}" for r in readme.ROWS
                                   if r.section == "scale" and r.pick(value)), sep="\n")
            continue
        print(f"\n== {section}")
        for row in value if isinstance(value, list) else [value]:
            for k, v in row.items():
                print(f"  {k:>24}: {v:.4g}" if isinstance(v, float) else f"  {k:>24}: {v}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
