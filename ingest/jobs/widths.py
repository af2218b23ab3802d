"""Width job: match each narrow SAE with its next wider sibling (atlas.match.widths), store the widths table.

Incremental: a pair already stored with the same parameters and weights (params_hash) is skipped.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from atlas.match.params import WidthParams
from atlas.match.widths import match_widths
from atlas.queries.common import require_saes
from atlas.store import Atlas, record_run
from atlas_ingest.sources import load_stored


@dataclass
class WidthSummary:
    computed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    classes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def _decoder(ref: tuple):
    return load_stored(*ref).weights.W_dec


def run_widths(atlas: Atlas, pairs: list[tuple[str, str]], params: WidthParams = WidthParams(),
               progress=None) -> WidthSummary:
    """Children, classes and combination cosines of every (narrow, wide) pair not yet stored."""
    summary = WidthSummary()
    t0 = time.perf_counter()
    with atlas.write() as w, record_run(w, "widths", {"pairs": len(pairs), **asdict(params)}) as run_id:
        rows = w.con.execute("SELECT sae_id, source, format, sha256, d_in, d_sae FROM saes").fetchall()
        refs = {r[0]: r[:4] for r in rows}
        shape = {r[0]: (r[4], r[5]) for r in rows}
        done = {tuple(r) for r in w.con.execute("SELECT DISTINCT sae_a, sae_b, params_hash FROM widths").fetchall()}
        for a, b in pairs:
            require_saes(refs, (a, b))
            if shape[a][0] != shape[b][0] or shape[a][1] >= shape[b][1]:
                raise ValueError(f"{a} and {b} are not width siblings: the second must be wider with the same d_in")
        for a, b in pairs:
            h = params.hash(refs[a][3], refs[b][3])
            if (a, b, h) in done:
                summary.skipped.append((a, b))
            else:
                t = match_widths(_decoder(refs[a]), _decoder(refs[b]), params)
                for name, value in (("sae_a", a), ("sae_b", b), ("tau", params.tau), ("params_hash", h), ("run_id", run_id)):
                    t = t.append_column(name, pa.repeat(value, t.num_rows))
                w.replace_widths(a, b, t)
                summary.computed.append((a, b))
                summary.classes.update(t["class"].to_pylist())
            if progress:
                progress(a, b)
    summary.seconds = time.perf_counter() - t0
    return summary
