"""Lineage of one feature within its stack: ancestors and descendants as a DAG (docs/design.md, Lineage).

From (sae, i), follow matches whose score passes the bar backward to the first layer and forward to
the last. Each edge has a kind (atlas.store.schema.EDGE_KIND; the SQL macro lineage_edges says the same):
  carry  the one-to-one assignment (SAE Match; Laptev et al. follow a feature's best match);
  split  feature_a is feature_b's best parent but not its assigned one: a parent with several children;
  merge  feature_b is feature_a's best child but assigned elsewhere: a child with several parents;
  gap    a carry that skips layers, tried (up to `max_skip`) only where a node has no edge to the next layer.
The default lineage follows these; edges='all' follows every passing candidate (ranks up to k), which
on real families grows hairballs of near-parallel features. The threshold is one checked Threshold: a fixed tau or a
per-pair quantile (the best q fraction of that pair's assigned scores; SAE Match: MSE scales differ per layer
pair). The walk goes layer by layer, one lookup per pair for the whole frontier, in the snapshot's edge catalog.
"""

from __future__ import annotations

from collections import Counter

from .. import budget
from ..errors import OverBudget, QueryError
from ..methods import Threshold
from ..store.edgeindex import CANDIDATE, CARRY, KINDS
from ..store.schema import LINEAGE_KINDS
from .checks import attach_checks
from .common import feature_url, top_tokens
from .computed import require_stack_method
from .records import Edge, Lineage, LineageLayer, Node

MAX_NODES = 2000
KIND_NAMES = [str(k) for k in KINDS]
EDGE_MODES = ("default", "all")
DIRECTIONS = ("both", "forward", "backward")


def threshold_values(snap, saes: list[str], threshold: Threshold) -> dict | float:
    """The bar's value: one number (tau), or per (sae_a, sae_b) the quantile of assigned scores, from just those
    pairs' edge indexes (or files)."""
    if threshold.quantile is None:
        return threshold.tau
    edges, m, q = snap.edges, threshold.method.name, threshold.q
    values = {(a, b): edges.quantile(a, b, m, q, snap) for a in saes for b, x in edges.out_of.get(a, []) if x == m}
    return {k: v for k, v in values.items() if v is not None}


def lineage(snap, sae_id: str, feature: int, threshold: Threshold | None = None, *, direction: str = "both",
            max_skip: int = 1, include_sites: bool = True, edges: str = "default") -> Lineage:
    """The lineage DAG of (sae_id, feature) by `threshold` (default: the default method's), as every caller gets it:
    refused where the stack was never matched with the threshold's method (not a feature that "dies" where nothing was
    matched), each edge with its ablation check where one is stored."""
    threshold = threshold or Threshold.of()
    method, distance = threshold.method.name, threshold.method.is_distance
    require_stack_method(snap, sae_id, method)
    if edges not in EDGE_MODES:
        raise QueryError(f"edges must be default or all, got {edges!r}")
    if direction not in DIRECTIONS:
        raise QueryError(f"direction must be both, forward or backward, got {direction!r}")
    if not 0 <= max_skip <= 8:
        raise QueryError(f"max_skip must be between 0 and 8, got {max_skip}")
    sae = snap.feature(sae_id, feature)
    stack = snap.stack(sae["stack"])
    ids = [s for s, _ in stack]
    layer_of = dict(stack)
    pos0 = ids.index(sae_id)
    values = threshold_values(snap, ids, threshold)
    # the lowest score kept backward, so a Parquet read may use the reverse file (distances keep low scores)
    lowest = None if distance else min(values.values(), default=None) if isinstance(values, dict) else values

    mode, found = edges, {}
    seen = {(sae_id, feature)}
    for forward in ([True, False] if direction == "both" else [direction == "forward"]):
        frontier = {pos0: {feature}}
        order = range(pos0, len(ids)) if forward else range(pos0, -1, -1)
        for pos in order:
            nodes = frontier.pop(pos, set())
            if not nodes:
                continue
            for e, step in _step(snap.edges, ids, pos, nodes, forward, max_skip, threshold, lowest, values, mode):
                budget.check("lineage")
                dst_pos = pos + step if forward else pos - step
                dst = (ids[dst_pos], e.feature_b if forward else e.feature_a)
                if step > 1 and e.kind == "carry":
                    e.kind = "gap"
                found[(e.sae_a, e.feature_a, e.sae_b, e.feature_b)] = e
                if dst not in seen:
                    if len(seen) >= MAX_NODES:
                        raise OverBudget(f"lineage has more than max_nodes={MAX_NODES} nodes; raise tau, lower max_skip "
                                         f"or ask for one direction", f"max_nodes={MAX_NODES}")
                    seen.add(dst)
                    frontier.setdefault(dst_pos, set()).add(dst[1])

    nodes = _nodes(snap, seen, layer_of, sae["site"], include_sites, threshold)
    root = next(n for n in nodes if n.sae_id == sae_id and n.feature == feature)
    birth = min(n.layer for n in nodes)
    death = max(n.layer for n in nodes)
    out = sorted(found.values(), key=lambda e: (layer_of[e.sae_a], e.feature_a, layer_of[e.sae_b], e.feature_b))
    ending, summary, layers = _summary(nodes, out, layer_of, ids, direction, threshold.label)
    return attach_checks(snap, Lineage(root=root, nodes=nodes, edges=out, birth_layer=birth, death_layer=death,
                                       lifespan=death - birth + 1, method=method, threshold=threshold.label,
                                       edges_mode=mode, ending=ending, summary=summary, layers=layers))




def _summary(nodes: list[Node], edges: list[Edge], layer_of: dict, ids: list[str], direction: str,
             threshold: str) -> tuple[str, str, list[LineageLayer]]:
    """(ending, summary, per-layer counts) from exactly the nodes and edges the answer holds, so the line never
    contradicts the graph drawn from them (docs/design.md, Lineage): where it is born, per layer how many features
    and by which kinds of edge they are reached, the last layer with a node, and how it ends there."""
    count = Counter(n.layer for n in nodes)
    into: dict[int, Counter] = {}
    for e in edges:
        into.setdefault(layer_of[e.sae_b], Counter())[e.kind] += 1
    layers = [LineageLayer(layer=layer, nodes=count[layer], **into.get(layer, {})) for layer in sorted(count)]
    born, last = layers[0], layers[-1]
    stack_layers = [layer_of[s] for s in ids]
    start = (f"followed from layer {born.layer}" if direction == "forward" else
             f"present from layer {born.layer}" if born.layer == stack_layers[0] else f"born at layer {born.layer}")
    parts = [start + (f" as {born.nodes} features" if born.nodes > 1 else "")]
    runs: list[list] = []  # [first layer, last layer, features, kinds]: equal neighbouring layers said once
    for x in layers[1:]:
        kinds = ", ".join(f"{getattr(x, k)} {k}" for k in LINEAGE_KINDS if getattr(x, k))
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


def _step(edges, ids, pos, nodes, forward, max_skip, threshold: Threshold, lowest, values, mode):
    """Edges from `nodes` at stack position pos to the next 1 + max_skip positions that pass the bar and that
    the edge mode follows, nearest layers first: one lookup per pair, filtered as arrays before any Edge is made.
    A layer further on is looked up only for the nodes with no such edge to a nearer one (a gap is only for
    missing matches)."""
    targets = ids[pos + 1: pos + 2 + max_skip] if forward else ids[max(0, pos - 1 - max_skip): pos][::-1]
    method = threshold.method.name
    pending = set(nodes)
    out = []
    for step, other in enumerate(targets, 1):
        if not pending:
            break
        a, b = (ids[pos], other) if forward else (other, ids[pos])
        v = values if not isinstance(values, dict) else values.get((a, b))
        r = edges.lookup(a, b, method, sorted(pending), forward, lowest) if v is not None else None
        if r is None or not len(r):
            continue
        keep = threshold.passes(r.score, v)
        if mode != "all":  # the default lineage follows carry/split/merge to the next layer, only carries across gaps
            keep &= (r.kind != CANDIDATE) if step == 1 else (r.kind == CARRY)
        r = r.take(keep)
        pending.difference_update((r.feature_a if forward else r.feature_b).tolist())
        found = sorted(zip(r.score.tolist(), r.feature_a.tolist(), r.feature_b.tolist(), r.rank.tolist(),
                           r.kind.tolist()), key=lambda x: -x[0])
        out += [(Edge(a, fa, b, fb, method, score, rank, kind == CARRY, gap=step - 1, kind=KIND_NAMES[kind]), step)
                for score, fa, fb, rank, kind in found]
    return out


def _nodes(snap, seen, layer_of, site, include_sites, threshold: Threshold) -> list[Node]:
    """The lineage's nodes with labels, Neuronpedia links, top tokens and flow origins: one query over just
    these nodes, and only for SAEs the snapshot has labels or examples of."""
    saes, feats = zip(*sorted(seen))
    # labels: one query over just the labelled nodes (it scans `features`: string zonemaps cannot narrow it)
    ask = [(s, f) for s, f in zip(saes, feats) if s in snap.labelled]
    labels = {(s, f): lab for s, f, lab in snap.execute(
        "SELECT f.sae_id, f.feature, f.label FROM (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n "
        "JOIN features f USING (sae_id, feature)", [[s for s, _ in ask], [f for _, f in ask]]).fetchall()} if ask else {}
    origins: dict[tuple[str, int], str] = {}
    if include_sites and site == "resid" and flow_sources(snap):
        for s in set(saes):
            mine = [f for x, f in seen if x == s]
            origins.update({(s, f): o for f, o in flow_origins(snap, s, mine, threshold).items()})
    tokens = top_tokens(snap, saes, feats)
    nodes = [Node(sae_id=s, feature=f, layer=layer_of[s], site=site, label=labels.get((s, f)),
                  neuronpedia_url=feature_url(snap.saes[s]["neuronpedia_id"], f), origin=origins.get((s, f)),
                  top_tokens=tokens.get((s, f))) for s, f in zip(saes, feats)]
    return sorted(nodes, key=lambda n: (n.layer, n.feature))


ORIGINS = ("RES", "MLP", "ATT")
SITE_ORIGIN = {"resid": "RES", "mlp": "MLP", "attn": "ATT"}


def flow_sources(snap) -> dict[str, list[tuple[str, str]]]:
    """resid sae_id -> (source SAE, class) of its feature-flow sources: the residual SAE of the stack's previous
    layer (RES), the MLP-out and attention-out SAEs of its layer (MLP, ATT), same model and d_in. Per snapshot."""
    def build():
        out: dict[str, list[tuple[str, str]]] = {}
        at: dict[tuple, list[dict]] = {}
        for r in snap.saes.values():
            if r["site"] in ("mlp", "attn"):
                at.setdefault((r["model"], r["d_in"], r["layer"]), []).append(r)
        if not at:
            return out
        for stack in snap.stacks.values():
            for i, (sae_id, layer) in enumerate(stack):
                me = snap.saes[sae_id]
                if me["site"] != "resid":
                    continue
                src = [(x["sae_id"], SITE_ORIGIN[x["site"]]) for x in at.get((me["model"], me["d_in"], layer), [])]
                if src and i and snap.saes[stack[i - 1][0]]["d_in"] == me["d_in"]:
                    src.append((stack[i - 1][0], "RES"))
                out[sae_id] = src
        return out
    return snap.cached("flow_sources", build)


def flow_origins(snap, sae_id: str, features: list[int], threshold: Threshold | None = None) -> dict[int, str]:
    """SAE feature flow classes for residual features at layer L (Laptev et al. 2025): the sources (flow_sources)
    whose best score passes `threshold` (default: the default method's) join the class name ('RES&MLP', …), none gives
    'from nowhere'. Empty where no MLP or attention SAE of that layer was matched to this one. Scores are read
    from those pairs' edge indexes (or files)."""
    threshold = threshold or Threshold.of()
    method, edges = threshold.method.name, snap.edges
    sources = [(src, kind) for src, kind in flow_sources(snap).get(sae_id, []) if (src, sae_id, method) in edges.pairs]
    if not {k for _, k in sources} & {"MLP", "ATT"}:
        return {}
    best: dict[int, set[str]] = {f: set() for f in features}
    for src, kind in sources:
        value = threshold.tau if threshold.quantile is None else edges.quantile(src, sae_id, method, threshold.q, snap)
        if value is None:
            continue
        r = edges.lookup(src, sae_id, method, features, False, None if threshold.method.is_distance else value)
        for f in r.feature_b[threshold.passes(r.score, value)].tolist():
            best[f].add(kind)
    return {f: "&".join(k for k in ORIGINS if k in ks) or "from nowhere" for f, ks in best.items()}


def lineage_shape(snap, sae_id: str, n_features: int = 256, threshold: Threshold | None = None,
                  big: int = 20) -> dict[str, dict]:
    """How big lineages get, per edge mode, over the first `n_features` features of an SAE: the share
    with more than `big` nodes, mean and largest node count, and the share of edges outside the assignment."""
    n = min(n_features, snap.sae(sae_id)["d_sae"])
    out = {}
    for mode in ("all", "default"):  # before and after typed edges
        sizes, n_edges, unassigned = [], 0, 0
        for f in range(n):
            lin = lineage(snap, sae_id, f, threshold, include_sites=False, edges=mode)
            sizes.append(len(lin.nodes))
            n_edges += len(lin.edges)
            unassigned += sum(not e.assigned for e in lin.edges)
        out[mode] = dict(features=n, over_big=sum(s > big for s in sizes) / n, mean_nodes=sum(sizes) / n,
                         max_nodes=max(sizes), edges=n_edges, unassigned_edges=unassigned / n_edges if n_edges else 0.0)
    return out
