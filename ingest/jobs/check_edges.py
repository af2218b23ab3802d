"""check-edges job: do lineage edges hold when the parent feature is ablated? (docs/design.md, Edges under ablation)

For each layer pair of a stack (up to `max_step` stack positions apart) the job samples up to `per_kind`
edges of each kind — carry, split, merge at adjacent layers; at larger steps carry (the feature also has an
edge to the layer between) and gap (it has none) — among edges whose parent fires on the held-out windows,
plus `random` non-edges of the same pair as the control (a parent that fires, a child active on the parent's
tokens whose score with it is below tau). Each parent is ablated once (atlas_ingest.ablation) for all its
sampled children; a child's relative drop is compared with the 95th percentile of its pair's control drops.
Rows go to `edge_checks`, one transaction per parent SAE.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from atlas.methods import method as method_info
from atlas.store.edgeindex import KINDS as EDGE_KINDS, kind_codes
from atlas.store import Atlas, record_run
from atlas_ingest.ablation import Ablator, Windows
from atlas_ingest.hooks import HookedRunner

KINDS = ("carry", "split", "merge", "gap", "random")


@dataclass(frozen=True)
class CheckParams:
    method: str = "decoder_cos"
    """Matching method whose edges are checked (a similarity method)."""
    tau: float = 0.7
    """Score bar of an edge, as lineage's default."""
    per_kind: int = 16
    """Edges sampled per pair and kind."""
    random: int = 32
    """Random non-edges per pair (the control)."""
    max_step: int = 2
    """Pairs up to this many stack positions apart (2: adjacent layers and one skipped layer, where gaps live)."""
    min_tokens: int = 2
    """A parent must fire on at least this many held-out tokens to be checked."""
    max_windows: int = 2
    """Held-out windows per ablation (those where the parent fires, first ones first): each ablation is one
    forward pass over these up to the deepest child's hook, the job's whole cost."""
    seed: int = 0


@dataclass
class CheckSummary:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    checks: int = 0
    ablations: int = 0
    seconds: float = 0.0


def stack_pairs(con, method: str, max_step: int, stack: str | None = None) -> list[tuple[str, str, int]]:
    """(sae_a, sae_b, step) of matched pairs of `method` within a stack, step = stack positions apart."""
    return [tuple(r) for r in con.execute("""
        WITH s AS (SELECT sae_id, stack, layer, dense_rank() OVER (PARTITION BY stack ORDER BY layer) AS pos
                   FROM saes WHERE coalesce(kind, 'sae') = 'sae' AND (? IS NULL OR stack = ?))
        SELECT a.sae_id, b.sae_id, (b.pos - a.pos)::INTEGER FROM pair_stats p
        JOIN s a ON a.sae_id = p.sae_a JOIN s b ON b.sae_id = p.sae_b
        WHERE p.method = ? AND a.stack = b.stack AND b.pos > a.pos AND b.pos - a.pos <= ?
        ORDER BY a.stack, a.pos, b.pos""", [stack, stack, method, max_step]).fetchall()]


def _kinds(rows) -> list[str]:
    """The edge kind of each (feature_a, feature_b, score, rank, rank_b, assigned) row."""
    rank, rank_b, assigned = (np.array([r[i] for r in rows]) for i in (3, 4, 5))
    return EDGE_KINDS[kind_codes(assigned, rank, rank_b)].tolist() if rows else []


def _edges(w, a: str, b: str, step: int, method: str, tau: float, next_of: dict) -> tuple[list, set[int]]:
    """The pair's lineage edges [(kind, feature_a, feature_b, score)] and every (feature_a, feature_b) scoring ≥ tau
    (no random control is drawn from those)."""
    rows = w.pair_rows("matches", a, b, method, "SELECT feature_a, feature_b, score, rank, rank_b, assigned FROM rows")
    passing = {(fa, fb) for fa, fb, s, *_ in rows if s >= tau}
    if step == 1:
        kinds = [(k, fa, fb, s) for k, (fa, fb, s, *_) in zip(_kinds(rows), rows) if s >= tau]
        return [k for k in kinds if k[0] != "candidate"], passing
    # across skipped layers lineage follows assigned edges only where the parent has no edge to the next layer
    nxt = next_of.get(a)
    near_rows = w.pair_rows("matches", a, nxt, method, "SELECT feature_a, feature_b, score, rank, rank_b, assigned "
                            "FROM rows") if nxt else []
    near = {fa for k, (fa, _, s, *_) in zip(_kinds(near_rows), near_rows) if s >= tau and k != "candidate"}
    return [("carry" if fa in near else "gap", fa, fb, s) for fa, fb, s, _, _, assigned in rows
            if assigned and s >= tau], passing


def _plan(ab: Ablator, a: str, b: str, edges: list, passing: set, p: CheckParams, rng) -> list[tuple]:
    """Sampled checks of one pair: (kind, feature_a, feature_b, score)."""
    fires = ab.fires(a)
    out = []
    for kind in KINDS[:-1]:
        pool = [e for e in edges if e[0] == kind and fires[e[1]] >= p.min_tokens]
        pick = rng.choice(len(pool), min(p.per_kind, len(pool)), replace=False) if pool else []
        out += [pool[i] for i in sorted(pick)]
    firing = np.flatnonzero(fires >= p.min_tokens)
    seen = set()
    for _ in range(4 * p.random):  # control: a firing parent, a child active on its tokens, not an edge of it
        if len(seen) >= p.random or not len(firing):
            break
        fa = int(rng.choice(firing))
        active = np.flatnonzero(ab.acts[b][ab.tokens(a, fa)].getnnz(axis=0))
        active = [int(f) for f in active if (fa, int(f)) not in passing and (fa, int(f)) not in seen]
        if active:
            fb = active[int(rng.integers(len(active)))]
            seen.add((fa, fb))
            out.append(("random", fa, fb, None))
    return out


def check_edges(atlas: Atlas, runner: HookedRunner, windows: Windows, pairs: list[tuple[str, str, int]] | None = None,
                params: CheckParams | None = None, stack: str | None = None, progress=None, batch: int = 16) -> CheckSummary:
    """Ablation checks of sampled edges of `pairs` (default: every matched stack pair up to params.max_step)
    on `windows` of `runner`'s model. `progress(step, done, total)`: step "clean" (windows run once clean),
    then "ablations" (one per sampled parent). Each SAE is read with the hooks the atlas stores for it."""
    from atlas_ingest.sources import load_stored

    p = params or CheckParams()
    if method_info(p.method).is_distance:
        raise ValueError(f"check-edges samples edges of similarity methods; {p.method} is a distance (use decoder_cos)")
    summary, t0 = CheckSummary(), time.perf_counter()
    rng = np.random.default_rng(p.seed)
    with atlas.write() as w, record_run(w, "check-edges", dict(asdict(p), stack=stack, windows=len(windows))) as run_id:
        pairs = pairs if pairs is not None else stack_pairs(w.con, p.method, p.max_step, stack)
        if not pairs:
            raise ValueError(f"no matched stack pairs of {p.method} to check (run `atlas match` first)")
        ids = sorted({s for a, b, _ in pairs for s in (a, b)})
        meta = {r[0]: r[1:] for r in w.con.execute("SELECT sae_id, source, format, layer, stack, sha256, hook, hook_out "
                                                   "FROM saes WHERE sae_id IN (SELECT unnest(?))", [ids]).fetchall()}
        saes = {s: load_stored(s, meta[s][0], meta[s][1], meta[s][4], layer=meta[s][2], hook=meta[s][5],
                               hook_out=meta[s][6]) for s in ids}
        ab = Ablator(runner, windows, saes, batch=batch, max_windows=p.max_windows,
                     progress=(lambda done, total: progress("clean", done, total)) if progress else None)
        order = sorted(meta, key=lambda s: (meta[s][3], meta[s][2]))
        next_of = {s: t for s, t in zip(order, order[1:]) if meta[s][3] == meta[t][3]}
        plans = {}
        for a, b, step in pairs:
            edges, passing = _edges(w, a, b, step, p.method, p.tau, next_of)
            plans[(a, b)] = _plan(ab, a, b, edges, passing, p, rng)
        by_parent = defaultdict(lambda: defaultdict(list))  # sae_a -> feature_a -> [(pair, index in plan)]
        for (a, b), plan in plans.items():
            for i, (_, fa, fb, _) in enumerate(plan):
                by_parent[a][fa].append(((a, b), i, fb))
        total, done = sum(len(f) for f in by_parent.values()), 0
        for a in sorted({a for a, _ in plans}, key=order.index):  # pairs with nothing to check are written too
            results: dict[tuple, dict[int, object]] = defaultdict(dict)
            for fa, targets in sorted(by_parent[a].items()):
                checked = ab.ablate(a, fa, [(pair[1], fb) for pair, _, fb in targets])
                for (pair, i, _), c in zip(targets, checked):
                    results[pair][i] = c
                done += 1
                if progress:
                    progress("ablations", done, total)
            with w.transaction():
                for (parent_sae, b), plan in plans.items():
                    if parent_sae == a:
                        w.replace_edge_checks(a, b, p.method, _rows(a, b, plan, results[(a, b)], saes, p.method, run_id))
                        summary.pairs.append((a, b))
                        summary.checks += len(plan)
            w.publish_every(60)
        summary.ablations = total
    summary.seconds = time.perf_counter() - t0
    return summary


def _rows(a: str, b: str, plan: list, checked: dict, saes: dict, method: str, run_id: str) -> pa.Table:
    """edge_checks rows of one pair: drops, the control's 95th percentile, holds."""
    drops = [checked[i].drop for i in range(len(plan))]
    control = [d for (kind, *_), d in zip(plan, drops) if kind == "random" and d is not None]
    p95 = float(np.quantile(control, 0.95)) if control else None
    distance = saes[b].meta.layer - saes[a].meta.layer
    return pa.table({
        "sae_a": pa.repeat(a, len(plan)).cast(pa.string()), "feature_a": pa.array([x[1] for x in plan], pa.int32()),
        "sae_b": pa.repeat(b, len(plan)).cast(pa.string()), "feature_b": pa.array([x[2] for x in plan], pa.int32()),
        "method": pa.repeat(method, len(plan)).cast(pa.string()), "kind": pa.array([x[0] for x in plan], pa.string()),
        "distance": pa.repeat(distance, len(plan)).cast(pa.int32()),
        "score": pa.array([x[3] for x in plan], pa.float32()),
        "n_tokens": pa.array([checked[i].n_tokens for i in range(len(plan))], pa.int32()),
        "clean": pa.array([checked[i].clean for i in range(len(plan))], pa.float32()),
        "rel_drop": pa.array(drops, pa.float32()),
        "control_p95": pa.array([p95] * len(plan), pa.float32()),
        "holds": pa.array([None if d is None or p95 is None else d > p95 for d in drops], pa.bool_()),
        "run_id": pa.repeat(run_id, len(plan)).cast(pa.string())})
