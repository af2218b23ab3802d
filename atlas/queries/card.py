"""A feature's card: its stats and label, Neuronpedia links, best matches both ways, example contexts, and for the
matches the lineage could follow, whether it does and why not (docs/design.md, Lineage: the card)."""

from __future__ import annotations

from ..methods import Threshold
from ..methods import method as method_info
from ..store.edgeindex import CARRY, KINDS
from .common import feature_url
from .records import FeatureCard, MatchRef

LINEAGE = Threshold.of()
"""The lineage the card explains: the default one (the default method at its default threshold)."""


def feature_card(snap, sae_id: str, feature: int, top: int = 5) -> FeatureCard:
    """The card of (sae_id, feature) with the best `top` matches per method, other SAE and direction."""
    sae = snap.feature(sae_id, feature)
    files = snap.edges
    dec_norm, threshold, density, max_act, label = snap.feature_row(sae_id, feature)
    # Point lookups in the table files: outgoing rows of the feature in each pair's file, incoming rows
    # in each reverse file (scores >= the method's floor) or, for distances, a filtered read of the pair's file.
    rows = files.outgoing(sae_id, feature, top) + files.incoming(sae_id, feature)
    matches: dict[str, list[MatchRef]] = {}
    kept: dict[tuple, int] = {}
    for method, other, f, score, rank, assigned, direction in sorted(
            rows, key=lambda r: method_info(r[0]).sort_key(r[3])):
        group = (method, other, direction)
        if kept.get(group, 0) < top:  # the best `top` of each other SAE, both directions
            kept[group] = kept.get(group, 0) + 1
            matches.setdefault(method, []).append(
                MatchRef(other, f, snap.saes[other]["layer"], score, rank, assigned, direction))
    for refs in matches.values():
        refs.sort(key=lambda m: (m.layer, m.sae_id, m.direction, m.rank))
    reasons, notes = lineage_reasons(snap, sae, feature)
    for m in matches.get(LINEAGE.method.name, []):
        m.kind, m.lineage = reasons.get((m.sae_id, m.feature, m.direction), (None, None))
        if m.lineage is None:
            m.lineage = _elsewhere(snap, sae, m)
    examples = []
    if sae_id in snap.examples:
        examples = snap.rows("SELECT kind, activation, tokens, highlight, dataset FROM examples WHERE sae_id = ? "
                             "AND feature = ? ORDER BY kind = 'top' DESC, activation DESC LIMIT 20", [sae_id, feature])
    npid = sae["neuronpedia_id"]
    return FeatureCard(sae_id=sae_id, feature=feature, layer=sae["layer"], label=label, dec_norm=dec_norm,
                       threshold=threshold, density=density, max_act=max_act,
                       neuronpedia_url=feature_url(npid, feature), neuronpedia_embed=feature_url(npid, feature, embed=True),
                       lineage_url=f"/api/saes/{sae_id}/features/{feature}/lineage", matches=matches, examples=examples,
                       lineage_notes=notes)


def _name(sae_id: str, feature: int) -> str:
    return f"{sae_id}/{feature}"


def lineage_reasons(snap, sae: dict, feature: int) -> tuple[dict[tuple, tuple[str, str]], list[str]]:
    """For each partner of (sae, feature) in the neighbouring layers of its stack: (edge kind, why the default
    lineage follows it or leaves it out), keyed (other SAE, other feature, 'out' | 'in'); and notes where the carry
    goes to a partner that scores lower than another (the assignment is one-to-one over the whole layer pair)."""
    files, method, tau = snap.edges, LINEAGE.method.name, LINEAGE.tau
    ids = [s for s, _ in snap.stack(sae["stack"])]
    pos = ids.index(sae["sae_id"])
    out: dict[tuple, tuple[str, str]] = {}
    notes: list[str] = []
    for forward, other in ((True, ids[pos + 1] if pos + 1 < len(ids) else None), (False, ids[pos - 1] if pos else None)):
        if other is None:
            continue
        a, b = (sae["sae_id"], other) if forward else (other, sae["sae_id"])
        mine = files.lookup(a, b, method, [feature], forward)
        partners = (mine.feature_b if forward else mine.feature_a).tolist()
        if not partners:
            continue
        theirs = files.lookup(a, b, method, partners, not forward)  # who each partner is assigned to
        theirs = theirs.take(theirs.kind == CARRY)
        partner_of = dict(zip((theirs.feature_b if forward else theirs.feature_a).tolist(),
                              (theirs.feature_a if forward else theirs.feature_b).tolist()))
        direction = "out" if forward else "in"
        scores = dict(zip(partners, mine.score.tolist()))
        kinds = {f: str(KINDS[code]) for f, code in zip(partners, mine.kind.tolist())}
        assignment = {f: _assignment(partner_of.get(f), a, b, forward) for f in partners}
        best_of = "this is its best parent" if forward else "it is this feature's best parent"
        child_of = "it is this feature's best child" if forward else "this is its best child"
        for f in partners:
            kind, score = kinds[f], scores[f]
            why = (f"left out: below τ = {tau}" + (" (it is the carry)" if kind == "carry" else "") if score < tau else
                   "carry: the one-to-one assignment pairs them" if kind == "carry" else
                   f"split: {best_of}, but {assignment[f]}" if kind == "split" else
                   f"merge: {child_of}, but {assignment[f]}" if kind == "merge" else
                   f"left out: neither is the other's best match, and {assignment[f]}" if kind == "candidate" else
                   f"{kind}: followed by the lineage; {assignment[f]}")
            out[(other, f, direction)] = (kind, why)
        carry = next((f for f in partners if kinds[f] == "carry"), None)
        better = [f for f in partners if carry is not None and scores[f] > scores[carry] and scores[carry] >= tau]
        if better:
            f = max(better, key=scores.get)
            drawn = f"drawn as a {kinds[f]} edge" if kinds[f] != "candidate" else "not drawn (neither's best match)"
            notes.append(
                f"The carry {'to' if forward else 'from'} layer {snap.saes[other]['layer']} "
                f"{'goes to' if forward else 'comes from'} {_name(other, carry)} ({scores[carry]:.3f}), not "
                f"{_name(other, f)} ({scores[f]:.3f}), which scores higher: the assignment is one-to-one over the whole "
                f"layer pair and maximises the total score, and {assignment[f]}; {_name(other, f)} is {drawn}.")
    return out, notes


def _assignment(x: int | None, a: str, b: str, forward: bool) -> str:
    """Where the one-to-one assignment puts a partner instead: x is its carry parent (forward) or child."""
    return ("the assignment leaves it unpaired" if x is None else
            f"the assignment carries {_name(a, x)} into it" if forward else f"the assignment carries it into {_name(b, x)}")


def _elsewhere(snap, sae: dict, m: MatchRef) -> str | None:
    """Why the default lineage never reaches a match with an SAE that is not a stack neighbour."""
    other = snap.saes.get(m.sae_id)
    if other is None:
        return None
    if other["stack"] != sae["stack"]:
        return f"left out: another stack ({other['stack']}); a lineage follows its own stack"
    ids = [s for s, _ in snap.stack(sae["stack"])]
    if abs(ids.index(m.sae_id) - ids.index(sae["sae_id"])) <= 1:
        return None
    if m.score < LINEAGE.tau:
        return f"left out: below τ = {LINEAGE.tau}"
    return ("left out unless as a gap: a lineage skips a layer only where a node has no passing edge to the layer "
            "between (max_skip 1)")
