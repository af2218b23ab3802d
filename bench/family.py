"""`python -m bench.family`: time each step of the MiniLM family build (`atlas minilm`, what `make demo` builds)
from a cold cache, at a budget given on the command line, and write `bench/results/family-<time>.json`.

The default family (200k tokens per corpus, 800k samples per SAE) takes about half an hour on 2 shared cores,
so the README's timing says what this JSON measured and how each step scales: activations with tokens, SAE
training with samples (samples/s is measured per SAE), matching and correlations with tokens and pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench import record

RESULTS = Path(__file__).parent / "results"


def run(max_tokens: int, samples: int, keep: Path | None = None) -> dict:
    from atlas.store import Atlas
    from atlas_ingest.jobs.family import STEPS, FamilyPlan, build_family
    from atlas_ingest.training import TrainConfig

    default = FamilyPlan()
    plan = FamilyPlan(max_tokens=max_tokens, train=TrainConfig(samples=samples))
    marks: dict[str, list[float]] = {}
    sae_done: list[tuple[float, int]] = []

    def progress(step, done, total, item=None, unit=None):
        t = time.monotonic()
        marks.setdefault(step, [t, t])[1] = t
        if step == "SAEs":
            sae_done.append((t, done))

    load0 = os.getloadavg()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        where = keep or Path(tmp)
        build_family(Atlas(where / "atlas.duckdb"), plan, where / "cache", log=lambda *_: None, progress=progress)
    total = time.monotonic() - t0
    steps = {s: round(marks[s][1] - marks[s][0], 1) for s in STEPS if s in marks}
    n_saes = len(plan.saes()) + len(plan.width_saes()) + len(plan.flow_saes())
    train_s = steps.get("SAEs", 0.0)
    return {"plan": {"max_tokens": max_tokens, "samples": samples, "corr_tokens": plan.corr_tokens, "saes": n_saes,
                     "d_sae": plan.train.d_sae, "batch": plan.train.batch},
            "default_plan": {"max_tokens": default.max_tokens, "samples": default.train.samples},
            "total_s": round(total, 1), "steps_s": steps,
            "before_first_step_s": round(min(m[0] for m in marks.values()) - t0, 1) if marks else None,
            "training_samples_per_s": round(n_saes * samples / train_s) if train_s else None,
            "load_avg_before": [round(x, 1) for x in load0], "load_avg_after": [round(x, 1) for x in os.getloadavg()]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.family", description=__doc__.splitlines()[0])
    p.add_argument("--max-tokens", type=int, default=40_000)
    p.add_argument("--samples", type=int, default=100_000)
    p.add_argument("--keep", type=Path, help="Build in this (new) folder and keep the atlas, e.g. for screenshots.")
    args = p.parse_args(argv)
    meta = record.metadata(vars(args))
    result = {"family": run(args.max_tokens, args.samples, args.keep)}
    path = RESULTS / time.strftime("family-%Y%m%dT%H%M%S.json", time.gmtime())
    path.write_text(json.dumps({"meta": meta, **result}, indent=1))
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
