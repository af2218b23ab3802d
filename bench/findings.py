"""`python -m bench.findings --atlas PATH`: run `atlas findings --json` on an atlas and keep its output as
`bench/results/findings-<time>.json`, with what produced it (the command, the atlas's SAEs and training
numbers, commit, host, versions). The README's findings table is generated from this file (bench.readme).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import record
from bench.readme import RESULTS
from atlas_ingest.server_process import ATLAS


def _ranges(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}–{format(hi, fmt)}"


def describe(atlas: Path, model: str) -> dict:
    """The SAEs the findings were measured on, read from the atlas itself."""
    from atlas.store import Atlas

    with Atlas(atlas).read() as con:
        cur = con.execute("SELECT s.sae_id, s.dataset, s.seed, s.layer, s.d_sae, s.arch, t.fvu, t.l0, t.samples, t.tokens "
                          "FROM saes s LEFT JOIN training t USING (sae_id) WHERE s.model LIKE ? ORDER BY ALL", [model])
        names = [d[0] for d in cur.description]
        saes = [dict(zip(names, r)) for r in cur.fetchall()]
        runs = [dict(zip(("kind", "params"), r)) for r in con.execute(
            "SELECT kind, params FROM runs WHERE kind IN ('correlate', 'minilm') AND status = 'ok' ORDER BY started_at").fetchall()]
    groups: dict[tuple, list[int]] = {}
    for s in saes:
        groups.setdefault((s["dataset"], s["seed"]), []).append(s["layer"])
    parts = [f"{d} seed {seed} at layers {'/'.join(map(str, sorted(layers)))}" for (d, seed), layers in sorted(groups.items())]
    trained = [s for s in saes if s["fvu"] is not None]
    summary = "; ".join(parts)
    if trained:
        summary += (f"; {', '.join(sorted({s['arch'] for s in saes}))}, width {_ranges([s['d_sae'] for s in saes], 'd')}, "
                    f"{_ranges([s['samples'] / 1e6 for s in trained], '.1f')}M samples each, "
                    f"L0 {_ranges([s['l0'] for s in trained], '.0f')}, FVU {_ranges([s['fvu'] for s in trained], '.2f')}")
    return {"n_saes": len(saes), "summary": summary, "saes": saes, "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.findings", description=__doc__.splitlines()[0])
    p.add_argument("--atlas", type=Path, required=True)
    p.add_argument("--model", default="all-MiniLM%")
    p.add_argument("--stack", default="%s0-prose")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--lineage-of", default=None, help="Also measure lineage sizes over this SAE's first 256 features.")
    args = p.parse_args(argv)
    cmd = ["atlas", "--atlas", str(args.atlas), "findings", "--json", "--model", args.model, "--stack", args.stack]
    if args.lineage_of:
        cmd += ["--lineage-of", args.lineage_of]
    out = subprocess.run([*ATLAS, *cmd[1:]], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr.strip() or f"atlas findings exited {out.returncode}")
    meta = record.metadata(vars(args))
    artifact = {"command": " ".join(c if "%" not in c else f"'{c}'" for c in cmd[:1] + cmd[3:]), "args": vars(args),
                "commit": meta["commit"], "dirty": meta["dirty"], "meta": meta, "atlas": describe(args.atlas, args.model),
                "findings": json.loads(out.stdout)}
    path = args.out or RESULTS / f"findings-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(artifact, indent=1, default=str))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
