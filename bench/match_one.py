"""`python -m bench match-one`: what one `atlas match` job of one 16k x 2304 pair costs (decoder_cos: candidates,
assignment, PW-MCC and MMCS), against one bare candidate search of the same decoders (`topk_both`, as the job
runs it), in one run: the first job of its shape, which computes PW-MCC's random baseline (a second candidate
search, of random decoders) and keeps it in the atlas, and a job of another pair of that shape, which reads it
(atlas/match/consistency.py; table random_baselines). CPU seconds are the steadier numbers on a shared machine.
"""

from __future__ import annotations

import time
from pathlib import Path


def _clocked(fn):
    """(wall seconds, CPU seconds, fn())."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run(workdir: Path, d_sae: int = 16384, d_in: int = 2304) -> dict:
    from atlas.match.candidates import topk_both
    from atlas.match.params import MatchParams
    from atlas.store import Atlas
    from atlas.synth import SynthConfig, generate
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.jobs.match import run_match
    from atlas_ingest.sources import read_sae

    folders = generate(SynthConfig(d_in=d_in, d_sae=d_sae, n_layers=3, n_seeds=1, second_dataset=False),
                       workdir / "match-one-family")
    atlas = Atlas(workdir / "match-one.duckdb")
    ingest(atlas, [lambda f=f: read_sae(f) for f in folders])
    with atlas.read() as con:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]
    out: dict = {"d_sae": d_sae, "d_in": d_in}
    for name, pair in (("first", (ids[0], ids[1])), ("known", (ids[1], ids[2]))):
        wall, cpu, _ = _clocked(lambda: run_match(atlas, [pair], ["decoder_cos"], MatchParams()))
        out[f"{name}_job_s"], out[f"{name}_job_cpu_s"] = wall, cpu
    with atlas.read() as con:
        out["baselines_kept"], out["baseline_s"] = con.execute(
            "SELECT count(*), max(seconds) FROM random_baselines").fetchone()
        out["pw_mcc"], out["pw_mcc_random"] = con.execute(
            "SELECT pw_mcc, pw_mcc_random FROM pair_stats WHERE sae_a = ? AND sae_b = ?", ids[1:3]).fetchone()
    a, b = (read_sae(f).weights.W_dec for f in folders[1:3])
    out["candidates_s"], out["candidates_cpu_s"], _ = _clocked(lambda: topk_both(a, b, 16, absmax=True))
    for name in ("first", "known"):
        out[f"{name}_vs_candidates"] = out[f"{name}_job_cpu_s"] / out["candidates_cpu_s"]
    out["target"] = "a job of a known shape <= 1.5x one candidate search (CPU time)"
    return out
