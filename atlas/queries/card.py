"""A feature's card: its stats and label, Neuronpedia links, best matches both ways, example contexts."""

from __future__ import annotations

from ..methods import method as method_info
from .common import check_feature, dict_rows, feature_url
from .edges import FileEdges
from .records import FeatureCard, MatchRef

FEATURE_COLUMNS = ("dec_norm", "threshold", "density", "max_act", "label")


def feature_card(con, sae_id: str, feature: int, top: int = 5, files: FileEdges | None = None,
                 row: tuple | None = None) -> FeatureCard:
    """The card of (sae_id, feature) with the best `top` matches per method, other SAE and direction. `files`: the
    snapshot's FileEdges (a server passes the one it holds); `row`: the feature's FEATURE_COLUMNS where the caller
    has a faster lookup (a server's rowid spans)."""
    files = files if files is not None else FileEdges.with_saes(con)
    sae = files.sae(sae_id)
    check_feature(sae, feature)
    if row is None:
        row = con.execute(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features WHERE sae_id = ? AND feature = ?",
                          [sae_id, feature]).fetchone() or (None,) * len(FEATURE_COLUMNS)
    dec_norm, threshold, density, max_act, label = row
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
                MatchRef(other, f, files.saes[other]["layer"], score, rank, assigned, direction))
    for refs in matches.values():
        refs.sort(key=lambda m: (m.layer, m.sae_id, m.direction, m.rank))
    examples = []
    if files.examples is None or sae_id in files.examples:
        examples = dict_rows(con, "SELECT kind, activation, tokens, highlight, dataset FROM examples WHERE sae_id = ? "
                             "AND feature = ? ORDER BY kind = 'top' DESC, activation DESC LIMIT 20", [sae_id, feature])
    npid = sae["neuronpedia_id"]
    return FeatureCard(sae_id=sae_id, feature=feature, layer=sae["layer"], label=label, dec_norm=dec_norm,
                       threshold=threshold, density=density, max_act=max_act,
                       neuronpedia_url=feature_url(npid, feature), neuronpedia_embed=feature_url(npid, feature, embed=True),
                       lineage_url=f"/api/saes/{sae_id}/features/{feature}/lineage", matches=matches, examples=examples)
