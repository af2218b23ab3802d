"""Lineage of one feature within its stack: ancestors and descendants as a DAG (docs/design.md, Lineage).

From (sae, i), follow matches whose score passes the bar backward to the first layer and forward to
the last. Each edge has a kind (edge_kind; the SQL macros edge_kind / lineage_edges say the same):
  carry  the one-to-one assignment (SAE Match; Laptev et al. follow a feature's best match);
  split  feature_a is feature_b's best parent but not its assigned one: a parent with several children;
  merge  feature_b is feature_a's best child but assigned elsewhere: a child with several parents;
  gap    a carry that skips layers, tried (up to `max_skip`) only where a node has no edge to the next layer.
The default lineage follows these; edges='all' follows every passing candidate (ranks up to k), which
on real families grows hairballs of near-parallel features. The bar is either a fixed `tau` (cosine) or
a per-pair `quantile`: keep the best q fraction of that pair's assigned scores (SAE Match: MSE scales
differ per layer pair). One SQL query per layer and direction, or the in-memory EdgeIndex.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from .common import SAE_COLUMNS, check_feature, check_fraction, check_method, sae_row, stack_saes
from .neuronpedia import feature_url
from . import budget
from .records import Edge, Lineage, Node, NotFound, OverBudget, QueryError

MAX_NODES = 2000
_EDGE_COLS = "sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned, coalesce(rank_b, 0) AS rank_b"
EDGE_MODES = ("default", "all")
_KINDS = np.array(["carry", "split", "merge", "candidate"])


def edge_kinds(assigned: np.ndarray, rank: np.ndarray, rank_b: np.ndarray) -> np.ndarray:
    """Kind of each edge (schema.py's edge_kind macro, vectorised): carry | split | merge | candidate."""
    return _KINDS[np.select([assigned, rank_b == 1, rank == 1], [0, 1, 2], 3)]


def edge_kind(assigned: bool, rank: int, rank_b: int) -> str:
    """The same rule for one edge (tests hold the two functions and the SQL macro to one answer)."""
    return "carry" if assigned else "split" if rank_b == 1 else "merge" if rank == 1 else "candidate"


def _follows(kind: str, step: int, edges: str) -> bool:
    """Whether a lineage follows an edge of this kind across `step` stack positions."""
    return edges == "all" or (kind != "candidate" if step == 1 else kind == "carry")


class EdgeIndex:
    """Every match of one method with score ≥ floor, held in sorted numpy arrays for O(log n) lookups
    from either end. A server builds one per snapshot; lineage() uses it when its bar is ≥ floor and
    falls back to SQL otherwise, with the same answers."""

    def __init__(self, con, method: str, floor: float = 0.5, saes: dict[str, dict] | None = None):
        self.method, self.floor = method, floor
        t = con.cursor().sql(f"SELECT {_EDGE_COLS} FROM matches WHERE method = ? AND score >= ?",
                             params=[method, floor]).to_arrow_table()
        ea, eb = (pc.dictionary_encode(t[c]).combine_chunks() for c in ("sae_a", "sae_b"))
        self.names = sorted(set(ea.dictionary.to_pylist()) | set(eb.dictionary.to_pylist()))
        self.code = {n: i for i, n in enumerate(self.names)}
        remap_a = np.array([self.code[n] for n in ea.dictionary.to_pylist()], dtype=np.int64)
        remap_b = np.array([self.code[n] for n in eb.dictionary.to_pylist()], dtype=np.int64)
        self.ca = remap_a[ea.indices.to_numpy()] if len(remap_a) else np.zeros(0, np.int64)
        self.cb = remap_b[eb.indices.to_numpy()] if len(remap_b) else np.zeros(0, np.int64)
        self.fa = t["feature_a"].to_numpy().astype(np.int64)
        self.fb = t["feature_b"].to_numpy().astype(np.int64)
        self.score = t["score"].to_numpy()
        self.rank = t["rank"].to_numpy()
        self.assigned = t["assigned"].to_numpy(zero_copy_only=False)
        self.kind = edge_kinds(self.assigned, self.rank, t["rank_b"].to_numpy())
        cur = con.cursor()
        self.labels = {(s, f): lab for s, f, lab in cur.execute(
            "SELECT sae_id, feature, label FROM features WHERE label IS NOT NULL").fetchall()}
        # The snapshot's SAE rows (a server passes the ones it already holds), stacks and node labels, so a
        # served lineage runs no SQL at all.
        self.saes = saes if saes is not None else {r[0]: dict(zip(SAE_COLUMNS, r)) for r in cur.execute(
            f"SELECT {', '.join(SAE_COLUMNS)} FROM saes").fetchall()}
        self.neuronpedia = {s: row["neuronpedia_id"] for s, row in self.saes.items()}
        self.stacks: dict[str, list[tuple[str, int]]] = {}
        for row in sorted(self.saes.values(), key=lambda r: (r["layer"], r["sae_id"])):
            self.stacks.setdefault(row["stack"], []).append((row["sae_id"], row["layer"]))
        self.top_tokens = _top_tokens(cur, None, None)
        self.flow_sites = any(row["site"] in ("mlp", "attn") for row in self.saes.values())
        ka, kb = (self.ca << 32) | self.fa, (self.cb << 32) | self.fb
        self.by_a, self.by_b = np.argsort(ka, kind="stable"), np.argsort(kb, kind="stable")
        self.ka, self.kb = ka[self.by_a], kb[self.by_b]

    def sae(self, sae_id: str) -> dict:
        """The SAE's row in this snapshot (NotFound as sae_row says it)."""
        if sae_id not in self.saes:
            raise NotFound(f"unknown SAE {sae_id!r}: GET /api/saes lists the SAEs in this atlas")
        return self.saes[sae_id]

    def edges(self, sae: str, features, targets: list[str], forward: bool) -> list[tuple]:
        if sae not in self.code:
            return []
        keys, order = (self.ka, self.by_a) if forward else (self.kb, self.by_b)
        want = {self.code[t] for t in targets if t in self.code}
        out = []
        for f in features:
            k = (self.code[sae] << 32) | int(f)
            lo, hi = np.searchsorted(keys, k), np.searchsorted(keys, k, side="right")
            for i in order[lo:hi]:
                other = self.cb[i] if forward else self.ca[i]
                if other in want:
                    out.append((self.names[self.ca[i]], int(self.fa[i]), self.names[self.cb[i]], int(self.fb[i]),
                                self.method, float(self.score[i]), int(self.rank[i]), bool(self.assigned[i]),
                                str(self.kind[i])))
        return out


def pair_bars(con, saes: list[str], method: str, tau: float | None, quantile: float | None) -> dict | float:
    """The score bar: one number (tau), or per (sae_a, sae_b) the quantile of assigned scores."""
    if quantile is None:
        return tau
    q = quantile if check_method(method).is_distance else 1 - quantile
    rows = con.execute(
        "SELECT sae_a, sae_b, quantile_cont(score, ?) FROM matches WHERE assigned AND method = ? "
        "AND sae_a IN (SELECT unnest(?)) GROUP BY ALL", [q, method, saes]).fetchall()
    return {(a, b): v for a, b, v in rows}


def _passes(bar, a: str, b: str, score: float, distance: bool) -> bool:
    v = bar if not isinstance(bar, dict) else bar.get((a, b))
    if v is None:
        return False
    return score <= v if distance else score >= v


def lineage(con, sae_id: str, feature: int, direction: str = "both", tau: float | None = 0.7,
            quantile: float | None = None, max_skip: int = 1, method: str = "decoder_cos",
            include_sites: bool = True, index: EdgeIndex | None = None, edges: str = "default") -> Lineage:
    distance = check_method(method).is_distance
    if edges not in EDGE_MODES:
        raise QueryError(f"edges must be default or all, got {edges!r}")
    if direction not in ("both", "forward", "backward"):
        raise QueryError(f"direction must be both, forward or backward, got {direction!r}")
    if not 0 <= max_skip <= 8:
        raise QueryError(f"max_skip must be between 0 and 8, got {max_skip}")
    if quantile is None and (tau is None or distance):
        quantile = 0.5 if distance else None
        if quantile is None:
            raise QueryError("give tau or quantile")
    if quantile is not None:
        check_fraction("quantile", quantile)
    cached = index is not None and index.method == method
    sae = index.sae(sae_id) if cached else sae_row(con, sae_id)
    check_feature(sae, feature)
    stack = index.stacks[sae["stack"]] if cached else stack_saes(con, sae["stack"])
    ids = [s for s, _ in stack]
    layer_of = dict(stack)
    pos0 = ids.index(sae_id)
    bar = pair_bars(con, ids, method, tau, quantile)
    usable = index is not None and index.method == method and not distance and (
        min(bar.values(), default=1.0) if isinstance(bar, dict) else bar) >= index.floor

    mode, edges = edges, {}
    seen = {(sae_id, feature)}
    for forward in ([True, False] if direction == "both" else [direction == "forward"]):
        frontier = {pos0: {feature}}
        order = range(pos0, len(ids)) if forward else range(pos0, -1, -1)
        for pos in order:
            nodes = frontier.pop(pos, set())
            if not nodes:
                continue
            for e, step in _step(con, ids, pos, nodes, forward, max_skip, method, index if usable else None):
                budget.check("lineage")
                if not _follows(e.kind, step, mode) or not _passes(bar, e.sae_a, e.sae_b, e.score, distance):
                    continue
                src = (e.sae_a, e.feature_a) if forward else (e.sae_b, e.feature_b)
                dst_pos = pos + step if forward else pos - step
                dst = (ids[dst_pos], e.feature_b if forward else e.feature_a)
                e.gap = step - 1
                if step > 1 and e.kind == "carry":
                    e.kind = "gap"
                if step > 1 and _has_nearer(edges, src, forward, step, ids, pos):
                    continue
                edges[(e.sae_a, e.feature_a, e.sae_b, e.feature_b)] = e
                if dst not in seen:
                    if len(seen) >= MAX_NODES:
                        raise OverBudget(f"lineage has more than max_nodes={MAX_NODES} nodes; raise tau, lower max_skip "
                                         f"or ask for one direction", f"max_nodes={MAX_NODES}")
                    seen.add(dst)
                    frontier.setdefault(dst_pos, set()).add(dst[1])

    nodes = _nodes(con, seen, layer_of, sae["site"], include_sites, method, index if usable else None)
    root = next(n for n in nodes if n.sae_id == sae_id and n.feature == feature)
    birth = min(n.layer for n in nodes)
    death = max(n.layer for n in nodes)
    threshold = f"quantile={quantile} per pair" if quantile is not None else f"tau={tau}"
    out = sorted(edges.values(), key=lambda e: (layer_of[e.sae_a], e.feature_a, layer_of[e.sae_b], e.feature_b))
    ending, summary = _summary(out, (sae_id, feature), layer_of, ids, direction)
    return Lineage(root=root, nodes=nodes, edges=out, birth_layer=birth, death_layer=death,
                   lifespan=death - birth + 1, method=method, threshold=threshold, edges_mode=mode,
                   ending=ending, summary=summary)


def _summary(edges: list[Edge], root: tuple, layer_of: dict, ids: list[str], direction: str) -> tuple[str, str]:
    """How the root's line goes: born (first node on its carry chain backward), splits along the way,
    last seen, and how it ends (survives / dies / splits into k / merges into another feature)."""
    out: dict[tuple, list[Edge]] = {}
    into: dict[tuple, list[Edge]] = {}
    for e in edges:
        out.setdefault((e.sae_a, e.feature_a), []).append(e)
        into.setdefault((e.sae_b, e.feature_b), []).append(e)
    carried = ("carry", "gap")
    first = root
    while direction != "forward" and (c := [e for e in into.get(first, []) if e.kind in carried]):
        first = (c[0].sae_a, c[0].feature_a)
    born = layer_of[first[0]]
    parts = [f"followed from layer {born}" if direction == "forward" else
             f"present from layer {born}" if first[0] == ids[0] else f"born at layer {born}"]
    node, ending = root, "unknown"
    while True:
        nxt = out.get(node, [])
        splits = [e for e in nxt if e.kind == "split"]
        carry = [e for e in nxt if e.kind in carried]
        if splits:
            parts.append(f"splits into {len(splits) + len(carry)} at layer {layer_of[splits[0].sae_b]}")
        if not carry:
            break
        node = (carry[0].sae_b, carry[0].feature_b)
    last = layer_of[node[0]]
    merge = [e for e in out.get(node, []) if e.kind == "merge"]
    split_end = [e for e in out.get(node, []) if e.kind == "split"]
    if direction == "backward":
        ending = "not followed forward"
    elif merge:
        ending = f"merges into {merge[0].sae_b}/{merge[0].feature_b}"
    elif split_end:
        ending = f"splits into {len(split_end)}"
    elif node[0] == ids[-1]:
        ending = "survives to the last layer"
    else:
        ending = "dies"
    parts += [f"last seen at layer {last}", ending]
    return ending, " · ".join(parts)


def _step(con, ids, pos, nodes, forward, max_skip, method, index=None):
    """Candidate edges from `nodes` at stack position pos to the next 1 + max_skip positions."""
    if index is not None:
        targets = ids[pos + 1: pos + 2 + max_skip] if forward else ids[max(0, pos - 1 - max_skip): pos][::-1]
        rows = index.edges(ids[pos], sorted(nodes), targets, forward)
    elif forward:
        targets = ids[pos + 1: pos + 2 + max_skip]
        sql = (f"SELECT {_EDGE_COLS} FROM matches WHERE sae_a = ? AND feature_a IN (SELECT unnest(?)) "
               f"AND sae_b IN (SELECT unnest(?)) AND method = ?")
    else:
        targets = ids[max(0, pos - 1 - max_skip): pos][::-1]
        sql = (f"SELECT {_EDGE_COLS} FROM matches WHERE sae_b = ? AND feature_b IN (SELECT unnest(?)) "
               f"AND sae_a IN (SELECT unnest(?)) AND method = ?")
    if not targets:
        return []
    if index is None:
        rows = con.execute(sql, [ids[pos], sorted(nodes), targets, method]).fetchall()
    step_of = {s: i + 1 for i, s in enumerate(targets)}
    if index is None:
        rows = [(*r[:8], edge_kind(r[7], r[6], r[8])) for r in rows]
    out = [(Edge(*r[:8], gap=0, kind=r[8]), step_of[r[2] if forward else r[0]]) for r in rows]
    return sorted(out, key=lambda x: (x[1], -x[0].score))  # nearest layers first


def _has_nearer(edges, src, forward, step, ids, pos) -> bool:
    """True when src already has a passing edge to a nearer layer (a gap is only for missing matches)."""
    for e in edges.values():
        if forward and (e.sae_a, e.feature_a) == src and ids.index(e.sae_b) - pos < step:
            return True
        if not forward and (e.sae_b, e.feature_b) == src and pos - ids.index(e.sae_a) < step:
            return True
    return False


def _nodes(con, seen, layer_of, site, include_sites, method, index: EdgeIndex | None) -> list[Node]:
    saes, feats = zip(*sorted(seen))
    if index is not None:  # labels and links from the index's snapshot caches
        rows = [(s, f, index.labels.get((s, f)), index.neuronpedia.get(s)) for s, f in zip(saes, feats)]
    else:
        rows = con.execute(
            "SELECT f.sae_id, f.feature, f.label, s.neuronpedia_id FROM (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n "
            "JOIN features f USING (sae_id, feature) JOIN saes s USING (sae_id)", [list(saes), list(feats)]).fetchall()
    origins: dict[tuple[str, int], str] = {}
    has_sites = index.flow_sites if index is not None else con.execute(
        "SELECT count(*) FROM saes WHERE site IN ('mlp', 'attn')").fetchone()[0] > 0
    if include_sites and site == "resid" and has_sites:
        for s in set(saes):
            mine = [f for x, f in seen if x == s]
            origins.update({(s, f): o for f, o in flow_origins(con, s, mine, method).items()})
    tokens = index.top_tokens if index is not None else _top_tokens(con, saes, feats)
    nodes = [Node(sae_id=s, feature=f, layer=layer_of[s], site=site, label=label, neuronpedia_url=feature_url(npid, f),
                  origin=origins.get((s, f)), top_tokens=tokens.get((s, f))) for s, f, label, npid in rows]
    return sorted(nodes, key=lambda n: (n.layer, n.feature))


def _top_tokens(con, saes, feats, n: int = 3) -> dict[tuple[str, int], list[str]]:
    """The firing tokens of each node's top examples, distinct, best first (WordPiece '##' dropped);
    saes=None: of every feature with examples (the edge index's snapshot cache)."""
    pick = "" if saes is None else "JOIN (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n USING (sae_id, feature) "
    rows = con.execute(
        "SELECT e.sae_id, e.feature, list(e.tokens[e.highlight + 1] ORDER BY e.activation DESC) FROM examples e "
        f"{pick}WHERE e.kind = 'top' GROUP BY ALL", [] if saes is None else [list(saes), list(feats)]).fetchall()
    out = {}
    for s, f, toks in rows:
        clean = list(dict.fromkeys(t.removeprefix("##").strip() for t in toks if t and t.strip()))
        if clean:
            out[(s, f)] = clean[:n]
    return out


def flow_origins(con, sae_id: str, features: list[int], method: str, tau: float = 0.5) -> dict[int, str]:
    """SAE feature flow classes for residual features at layer L (Laptev et al. 2025): best scores
    vs residual L−1 (RES), MLP-out L (MLP) and attention-out L (ATT) of the same model; each above
    `tau` joins the class name ('RES&MLP', …), none gives 'from nowhere'. Empty where no MLP or
    attention SAE of that layer was matched to this one."""
    rows = con.execute("""
        WITH me AS (SELECT * FROM saes WHERE sae_id = ?),
        src AS (SELECT s.sae_id, CASE WHEN s.site = 'resid' THEN 'RES' WHEN s.site = 'mlp' THEN 'MLP' ELSE 'ATT' END AS kind
                FROM saes s, me WHERE s.model = me.model AND s.d_in = me.d_in AND (
                    (s.site IN ('mlp', 'attn') AND s.layer = me.layer) OR
                    (s.stack = me.stack AND s.layer = (SELECT max(layer) FROM saes x WHERE x.stack = me.stack AND x.layer < me.layer))))
        SELECT m.feature_b, src.kind, max(m.score) FROM matches m JOIN src ON m.sae_a = src.sae_id
        WHERE m.sae_b = ? AND m.method = ? AND m.feature_b IN (SELECT unnest(?)) GROUP BY ALL""",
                       [sae_id, sae_id, method, features]).fetchall()
    kinds = {k for _, k, _ in rows}
    if not kinds & {"MLP", "ATT"}:
        return {}
    best: dict[int, set[str]] = {f: set() for f in features}
    for f, kind, score in rows:
        if score >= tau:
            best[f].add(kind)
    order = ("RES", "MLP", "ATT")
    return {f: "&".join(k for k in order if k in ks) or "from nowhere" for f, ks in best.items()}


def lineage_shape(con, sae_id: str, n_features: int = 256, tau: float = 0.7, method: str = "decoder_cos",
                  big: int = 20) -> dict[str, dict]:
    """How big lineages get, per edge mode, over the first `n_features` features of an SAE: the share
    with more than `big` nodes, mean and largest node count, and the share of edges outside the assignment."""
    check_method(method)
    n = min(n_features, sae_row(con, sae_id)["d_sae"])
    index = EdgeIndex(con, method, min(tau, 0.5)) if not check_method(method).is_distance else None
    out = {}
    for mode in ("all", "default"):  # before and after typed edges
        sizes, n_edges, unassigned = [], 0, 0
        for f in range(n):
            lin = lineage(con, sae_id, f, tau=tau, method=method, include_sites=False, index=index, edges=mode)
            sizes.append(len(lin.nodes))
            n_edges += len(lin.edges)
            unassigned += sum(not e.assigned for e in lin.edges)
        out[mode] = dict(features=n, over_big=sum(s > big for s in sizes) / n, mean_nodes=sum(sizes) / n,
                         max_nodes=max(sizes), edges=n_edges, unassigned_edges=unassigned / n_edges if n_edges else 0.0)
    return out
