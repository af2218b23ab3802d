"""Feature splitting across dictionary sizes and seed consistency, over the widths and pair_stats tables.

width_tree() reads the `width_tree` SQL macro, so SQL users get the same tree; width_pairs() and
consistency() are the tables `atlas findings` prints.
"""

from __future__ import annotations

from collections import Counter

from .common import top_tokens
from .computed import require
from .findings import CONSISTENCY_SQL, WIDTHS_SQL
from .records import Consistency, WidthNode, WidthPair, WidthTree

MAX_TREE = 1000  # nodes; a 16k -> 1M sweep splits a feature into tens of children, not thousands


def width_tree(snap, sae_id: str, feature: int) -> WidthTree:
    """The feature's narrower ancestors and wider descendants (empty but for itself where no width
    siblings were matched: `atlas match --pairs widths`)."""
    snap.feature(sae_id, feature)
    require(snap, "widths", sae=sae_id)
    rows = snap.execute("SELECT depth, sae_id, d_sae, feature, parent_sae, parent_feature, score, class, n_children, "
                        "combo_cos, label, min_child_cos FROM width_tree(?, ?) LIMIT ?", [sae_id, feature, MAX_TREE]).fetchall()
    tokens = top_tokens(snap, [r[1] for r in rows], [r[3] for r in rows])
    nodes = [WidthNode(sae_id=s, d_sae=d, feature=f, depth=depth, parent_sae=ps, parent_feature=pf, score=sc, cls=c,
                       n_children=n, combo_cos=cc, label=lab, top_tokens=tokens.get((s, f)), min_child_cos=mc)
             for depth, s, d, f, ps, pf, sc, c, n, cc, lab, mc in rows]
    root = next(n for n in nodes if n.depth == 0)
    return WidthTree(root=root, nodes=nodes, summary=_summary(nodes, root))


def _summary(nodes: list[WidthNode], root: WidthNode) -> str:
    """Walk from the root through the wider SAEs: at each width, how many descendants it has."""
    if all(n.depth == 0 for n in nodes) and root.cls is None:
        return f"no wider or narrower sibling of {root.sae_id} has been matched (atlas match --pairs widths)"
    up = sorted((n for n in nodes if n.depth < 0), key=lambda n: n.depth)
    parts = [f"descends from {up[0].sae_id}/{up[0].feature} (width {up[0].d_sae})" if up else f"width {root.d_sae}"]
    by_width = Counter(n.d_sae for n in nodes if n.depth > 0)
    if root.cls == "absent":
        parts.append("absent from the next wider SAE")
    for k, (width, count) in enumerate(sorted(by_width.items())):
        if k == 0 and root.cls == "split":
            combo = f" (best non-negative combination: cosine {root.combo_cos:.2f})" if root.combo_cos is not None else ""
            parts.append(f"splits into {count} at width {width}{combo}")
        elif k == 0 and root.cls == "duplicate":
            twins = f" (near-copies: cosine ≥ {root.min_child_cos:.2f})" if root.min_child_cos is not None else ""
            parts.append(f"duplicated {count}× at width {width}{twins}")
        else:
            parts.append(f"kept at width {width}" if count == 1 else f"{count} features at width {width}")
    return " · ".join(parts)


def width_pairs(snap, model: str = "%") -> list[WidthPair]:
    require(snap, "model_widths", model=model)
    return snap.records(WidthPair, WIDTHS_SQL, [model])


def consistency(snap, model: str = "%") -> list[Consistency]:
    require(snap, "model_siblings", model=model)
    return snap.records(Consistency, CONSISTENCY_SQL, [model])
