"""Lineage of one feature within its stack: ancestors and descendants as a DAG (docs/design.md, Lineage).

From (sae, i), follow matches whose score passes the bar backward to the first layer and forward to
the last. Each edge has a kind (atlas.store.schema.EDGE_KIND; the SQL macro lineage_edges says the same):
  carry  the one-to-one assignment (SAE Match; Laptev et al. follow a feature's best match);
  split  feature_a is feature_b's best parent but not its assigned one: a parent with several children;
  merge  feature_b is feature_a's best child but assigned elsewhere: a child with several parents;
  gap    a carry that skips layers, tried (up to `max_skip`) only where a node has no edge to the next layer.
The default lineage follows these; edges='all' follows every passing candidate (ranks up to k), which
on real families grows hairballs of near-parallel features. The bar is either a fixed `tau` (cosine) or
a per-pair `quantile`: keep the best q fraction of that pair's assigned scores (SAE Match: MSE scales
differ per layer pair). The walk goes layer by layer, one lookup per pair for the whole frontier, in the pairs'
edge indexes (edges.FileEdges): a server passes the one its snapshot holds, a library call reads the
connection's catalog.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..store.edgeindex import CANDIDATE, CARRY, KINDS
from .. import budget
from .checks import attach_checks
from .common import check_feature, check_fraction, check_method, check_tau, feature_url, sae_row, top_tokens
from .computed import require_stack_method
from .edges import FileEdges
from .records import Edge, Lineage, LineageLayer, Node
from ..errors import OverBudget, QueryError

MAX_NODES = 2000
EDGE_MODES = ("default", "all")


def pair_bars(con, saes: list[str], method: str, tau: float | None, quantile: float | None,
              files: FileEdges | None = None) -> dict | float:
    """The score bar: one number (tau), or per (sae_a, sae_b) the quantile of assigned scores, from just those
    pairs' edge indexes (or files)."""
    if quantile is None:
        return tau
    q = quantile if check_method(method).is_distance else 1 - quantile
    files = files if files is not None else FileEdges.of(con)
    bars = {(a, b): files.quantile(a, b, m, q, con) for a in saes for b, m in files.out_of.get(a, []) if m == method}
    return {k: v for k, v in bars.items() if v is not None}


def lineage(con, sae_id: str, feature: int, direction: str = "both", tau: float | None = 0.7,
            quantile: float | None = None, max_skip: int = 1, method: str = "decoder_cos",
            include_sites: bool = True, files: FileEdges | None = None, edges: str = "default") -> Lineage:
    """The lineage DAG of (sae_id, feature). `files`: the snapshot's FileEdges (a server passes the one it
    holds; by default read from the connection's catalog)."""
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
    files = files if files is not None else FileEdges.with_saes(con)
    sae = files.sae(sae_id)
    check_feature(sae, feature)
    stack = files.stack(sae["stack"])
    ids = [s for s, _ in stack]
    layer_of = dict(stack)
    pos0 = ids.index(sae_id)
    bar = pair_bars(con, ids, method, tau, quantile, files)
    # the lowest score kept backward (distances keep low scores: no floor applies)
    low = None if distance else min(bar.values(), default=None) if isinstance(bar, dict) else bar

    mode, edges = edges, {}
    seen = {(sae_id, feature)}
    for forward in ([True, False] if direction == "both" else [direction == "forward"]):
        frontier = {pos0: {feature}}
        order = range(pos0, len(ids)) if forward else range(pos0, -1, -1)
        for pos in order:
            nodes = frontier.pop(pos, set())
            if not nodes:
                continue
            for e, step in _step(files, ids, pos, nodes, forward, max_skip, method, low, bar, mode, distance):
                budget.check("lineage")
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

    nodes = _nodes(con, seen, layer_of, sae["site"], include_sites, method, files)
    root = next(n for n in nodes if n.sae_id == sae_id and n.feature == feature)
    birth = min(n.layer for n in nodes)
    death = max(n.layer for n in nodes)
    threshold = f"quantile={quantile} per pair" if quantile is not None else f"tau={tau}"
    out = sorted(edges.values(), key=lambda e: (layer_of[e.sae_a], e.feature_a, layer_of[e.sae_b], e.feature_b))
    ending, summary, layers = _summary(nodes, out, layer_of, ids, direction, threshold)
    return Lineage(root=root, nodes=nodes, edges=out, birth_layer=birth, death_layer=death,
                   lifespan=death - birth + 1, method=method, threshold=threshold, edges_mode=mode,
                   ending=ending, summary=summary, layers=layers)


def checked_lineage(con, sae_id: str, feature: int, direction: str = "both", tau: float | None = 0.7,
                    quantile: float | None = None, max_skip: int = 1, method: str = "decoder_cos",
                    include_sites: bool = True, files: FileEdges | None = None, edges: str = "default") -> Lineage:
    """The lineage as the API serves it: tau checked, refused where the stack was never matched with `method`
    (not a feature that "dies" where nothing was matched), each edge with its ablation check where stored."""
    m = check_method(method)
    if tau is not None and quantile is None and not m.is_distance:
        check_tau(m, tau)
    require_stack_method(con, sae_id, method)
    return attach_checks(con, lineage(con, sae_id, feature, direction, tau, quantile, max_skip, method, include_sites,
                                      files, edges))


KIND_ORDER = ("carry", "gap", "split", "merge", "candidate")


def _summary(nodes: list[Node], edges: list[Edge], layer_of: dict, ids: list[str], direction: str,
             threshold: str) -> tuple[str, str, list[LineageLayer]]:
    """(ending, summary, per-layer counts) from exactly the nodes and edges the answer holds, so the line never
    contradicts the graph drawn from them (docs/design.md, Lineage): where it is born, per layer how many features
    and by which kinds of edge they are reached, the last layer with a node, and how it ends there."""
    count = Counter(n.layer for n in nodes)
    into: dict[int, Counter] = {}
    for e in edges:
        into.setdefault(layer_of[e.sae_b], Counter())[e.kind] += 1
    layers = [LineageLayer(layer=layer, nodes=count[layer], **{k: into.get(layer, Counter())[k] for k in KIND_ORDER})
              for layer in sorted(count)]
    born, last = layers[0], layers[-1]
    stack_layers = [layer_of[s] for s in ids]
    start = (f"followed from layer {born.layer}" if direction == "forward" else
             f"present from layer {born.layer}" if born.layer == stack_layers[0] else f"born at layer {born.layer}")
    parts = [start + (f" as {born.nodes} features" if born.nodes > 1 else "")]
    runs: list[list] = []  # [first layer, last layer, features, kinds]: equal neighbouring layers said once
    for x in layers[1:]:
        kinds = ", ".join(f"{getattr(x, k)} {k}" for k in KIND_ORDER if getattr(x, k))
        if runs and runs[-1][2:] == [x.nodes, kinds] and _next(stack_layers, runs[-1][1]) == x.layer:
            runs[-1][1] = x.layer
        else:
            runs.append([x.layer, x.layer, x.nodes, kinds])
    parts += [(f"layer {a}: " if a == b else f"layers {a}–{b}: ") + f"{n} feature{'s' if n > 1 else ''}"
              + ("" if a == b else " each") + f" ({kinds})" for a, b, n, kinds in runs]
    parts.append(f"last node at layer {last.layer}")
    if direction == "backward":
        ending = "not followed forward"
        parts.append(ending)
    elif last.layer == stack_layers[-1]:
        ending = "survives to the last layer"
        parts.append(ending + (f" as {last.nodes} features" if last.nodes > 1 else ""))
    else:
        ending = "dies"
        parts.append(f"dies: no edge from layer {last.layer} passes {threshold} to layer {_next(stack_layers, last.layer)}")
    return ending, " · ".join(parts), layers


def _next(stack_layers: list[int], layer: int) -> int | None:
    """The stack's next layer after `layer` (stacks may skip layers)."""
    return next((x for x in stack_layers if x > layer), None)


def _step(files: FileEdges, ids, pos, nodes, forward, max_skip, method, low, bar, mode, distance):
    """Edges from `nodes` at stack position pos to the next 1 + max_skip positions that pass the bar and that
    the edge mode follows: one lookup per pair, filtered as arrays before any Edge is made."""
    targets = ids[pos + 1: pos + 2 + max_skip] if forward else ids[max(0, pos - 1 - max_skip): pos][::-1]
    features = sorted(nodes)
    out = []
    for step, other in enumerate(targets, 1):
        a, b = (ids[pos], other) if forward else (other, ids[pos])
        r = files.lookup(a, b, method, features, forward, low)
        v = bar if not isinstance(bar, dict) else bar.get((a, b))
        if not len(r) or v is None:
            continue
        score = r.score.astype(np.float64)  # compared as DOUBLE, as SQL compares a FLOAT column with tau
        keep = (score <= v) if distance else (score >= v)
        if mode != "all":  # the default lineage follows carry/split/merge to the next layer, only carries across gaps
            keep &= (r.kind != CANDIDATE) if step == 1 else (r.kind == CARRY)
        r = r.take(keep)
        out += [(Edge(a, fa, b, fb, method, s, rank, kind == CARRY, gap=0, kind=str(KINDS[kind])), step)
                for fa, fb, s, rank, kind in zip(r.feature_a.tolist(), r.feature_b.tolist(), r.score.tolist(),
                                                 r.rank.tolist(), r.kind.tolist())]
    return sorted(out, key=lambda x: (x[1], -x[0].score))  # nearest layers first


def _has_nearer(edges, src, forward, step, ids, pos) -> bool:
    """True when src already has a passing edge to a nearer layer (a gap is only for missing matches)."""
    return any(((e.sae_a, e.feature_a) == src and ids.index(e.sae_b) - pos < step) if forward else
               ((e.sae_b, e.feature_b) == src and pos - ids.index(e.sae_a) < step) for e in edges.values())


def _nodes(con, seen, layer_of, site, include_sites, method, files: FileEdges) -> list[Node]:
    """The lineage's nodes with labels, Neuronpedia links, top tokens and flow origins: one query over just
    these nodes (features are stored by (sae_id, feature), so it reads few blocks)."""
    saes, feats = zip(*sorted(seen))
    # labels: one query over just the labelled nodes (it scans `features`: string zonemaps cannot narrow it)
    ask = [(s, f) for s, f in zip(saes, feats) if files.labelled is None or s in files.labelled]
    labels = {(s, f): lab for s, f, lab in con.execute(
        "SELECT f.sae_id, f.feature, f.label FROM (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n "
        "JOIN features f USING (sae_id, feature)", [[s for s, _ in ask], [f for _, f in ask]]).fetchall()} if ask else {}
    origins: dict[tuple[str, int], str] = {}
    if include_sites and site == "resid" and files.flow_sites:
        for s in set(saes):
            mine = [f for x, f in seen if x == s]
            origins.update({(s, f): o for f, o in flow_origins(con, s, mine, method, files=files).items()})
    tokens = top_tokens(con, saes, feats) if files.examples is None or files.examples & set(saes) else {}
    nodes = [Node(sae_id=s, feature=f, layer=layer_of[s], site=site, label=labels.get((s, f)),
                  neuronpedia_url=feature_url(files.saes[s]["neuronpedia_id"], f), origin=origins.get((s, f)),
                  top_tokens=tokens.get((s, f))) for s, f in zip(saes, feats)]
    return sorted(nodes, key=lambda n: (n.layer, n.feature))


def flow_origins(con, sae_id: str, features: list[int], method: str, tau: float = 0.5,
                 files: FileEdges | None = None) -> dict[int, str]:
    """SAE feature flow classes for residual features at layer L (Laptev et al. 2025): best scores
    vs residual L−1 (RES), MLP-out L (MLP) and attention-out L (ATT) of the same model; each above
    `tau` joins the class name ('RES&MLP', …), none gives 'from nowhere'. Empty where no MLP or
    attention SAE of that layer was matched to this one. Scores are read from those pairs' files."""
    files = files if files is not None else FileEdges.of(con)
    sources = con.execute("""
        WITH me AS (SELECT * FROM saes WHERE sae_id = ?)
        SELECT s.sae_id, CASE WHEN s.site = 'resid' THEN 'RES' WHEN s.site = 'mlp' THEN 'MLP' ELSE 'ATT' END AS kind
        FROM saes s, me WHERE s.model = me.model AND s.d_in = me.d_in AND (
            (s.site IN ('mlp', 'attn') AND s.layer = me.layer) OR
            (s.stack = me.stack AND s.layer = (SELECT max(layer) FROM saes x WHERE x.stack = me.stack AND x.layer < me.layer)))""",
                          [sae_id]).fetchall()
    sources = [(src, kind) for src, kind in sources if (src, sae_id, method) in files.pairs]
    if not {k for _, k in sources} & {"MLP", "ATT"}:
        return {}
    best: dict[int, set[str]] = {f: set() for f in features}
    for src, kind in sources:
        r = files.lookup(src, sae_id, method, features, False, tau)
        for f, score in zip(r.feature_b.tolist(), r.score.tolist()):
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
    files = FileEdges.with_saes(con)
    out = {}
    for mode in ("all", "default"):  # before and after typed edges
        sizes, n_edges, unassigned = [], 0, 0
        for f in range(n):
            lin = lineage(con, sae_id, f, tau=tau, method=method, include_sites=False, files=files, edges=mode)
            sizes.append(len(lin.nodes))
            n_edges += len(lin.edges)
            unassigned += sum(not e.assigned for e in lin.edges)
        out[mode] = dict(features=n, over_big=sum(s > big for s in sizes) / n, mean_nodes=sum(sizes) / n,
                         max_nodes=max(sizes), edges=n_edges, unassigned_edges=unassigned / n_edges if n_edges else 0.0)
    return out
