"""Neuronpedia both ways: links to feature pages (https://www.neuronpedia.org/{modelId}/{sourceId}/{index})
and lists of atlas features (a lineage, an orphan set, a layer pair's matches) as Neuronpedia lists:
items {modelId, layer, index, description} and the quick-list URL that opens them there.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import msgspec

from ..errors import NotFound
from ..methods import Threshold
from .common import NEURONPEDIA
from .computed import require
from .lineage import lineage
from .orphans import orphans, sharing_tau

MAX_ITEMS = 500  # a quick list travels in its URL: keep it a size browsers and Neuronpedia accept


class ListItem(msgspec.Struct):
    modelId: str
    layer: str
    """Neuronpedia's sourceId, e.g. 20-gemmascope-res-16k (its quick lists call it layer)."""
    index: str
    description: str


class NeuronpediaList(msgspec.Struct):
    name: str
    items: list[ListItem]
    url: str | None
    """Opens the items as a Neuronpedia quick list (None when no item has a Neuronpedia id)."""
    missing: list[str]
    """SAEs of the selection without a Neuronpedia id (`atlas saes set SAE --neuronpedia-id …`)."""
    truncated: bool


def sae_of(snap, model_id: str, source_id: str) -> str:
    """The SAE whose neuronpedia_id is modelId/sourceId."""
    npid = f"{model_id}/{source_id}"
    found = next((s for s, row in sorted(snap.saes.items()) if row["neuronpedia_id"] == npid), None)
    if found is None:
        raise NotFound(f"no SAE in this atlas has neuronpedia_id {npid}; "
                       f"set one with `atlas saes set SAE --neuronpedia-id {npid}`")
    return found


def quick_list_url(name: str, items: list[ListItem]) -> str:
    features = [{"modelId": i.modelId, "layer": i.layer, "index": i.index, "description": i.description} for i in items]
    return f"{NEURONPEDIA}/quick-list/?name={quote(name)}&features={quote(json.dumps(features, separators=(',', ':')))}"


def as_list(snap, name: str, features: list[tuple[str, int, str]]) -> NeuronpediaList:
    """(sae_id, feature, description) -> a Neuronpedia list; features of SAEs without an id are left out."""
    items, missing = [], set()
    for sae, f, text in features:
        npid = snap.sae(sae)["neuronpedia_id"]
        if not npid:
            missing.add(sae)
            continue
        model, _, source = npid.partition("/")
        items.append(ListItem(modelId=model, layer=source, index=str(f), description=text))
    truncated = len(items) > MAX_ITEMS
    items = items[:MAX_ITEMS]
    return NeuronpediaList(name=name, items=items, url=quick_list_url(name, items) if items else None,
                           missing=sorted(missing), truncated=truncated)


def lineage_list(snap, sae_id: str, feature: int, threshold: Threshold | None = None) -> NeuronpediaList:
    """Every feature of a lineage, in layer order, described by layer and label."""
    lin = lineage(snap, sae_id, feature, threshold)
    nodes = sorted(lin.nodes, key=lambda n: (n.layer, n.sae_id, n.feature))
    return as_list(snap, f"lineage of {sae_id}/{feature}",
                   [(n.sae_id, n.feature, f"layer {n.layer}" + (f": {n.label}" if n.label else "")) for n in nodes])


def orphans_list(snap, sae_id: str, tau: float | None = None, by: str = "any") -> NeuronpediaList:
    """The orphans of an SAE: features shared with none of its matched siblings."""
    o = orphans(snap, sae_id, tau, by=by)
    return as_list(snap, f"orphans of {sae_id} ({by}, tau {sharing_tau(tau)})",
                   [(sae_id, s.feature, "orphan" + (f": {s.label}" if s.label else "")) for s in o.orphans])


def pair_list(snap, sae_a: str, sae_b: str, threshold: Threshold | None = None) -> NeuronpediaList:
    """A pair's assigned matches passing `threshold` (at least tau, at most for *_mse; or the pair's best quantile), both
    sides, best first."""
    snap.sae(sae_a)
    snap.sae(sae_b)
    threshold = threshold or Threshold.of()
    method = threshold.method.name
    op, order = (">=", "DESC") if threshold.method.higher_is_better else ("<=", "ASC")
    files = snap.edges.files_of("matches", [(sae_a, sae_b, method)])  # the pair's own file, not the view
    value = threshold.tau if threshold.quantile is None or not files else snap.edges.quantile(sae_a, sae_b, method, threshold.q, snap)
    rows = snap.execute(
        f"SELECT m.feature_a, m.feature_b, m.score, fa.label, fb.label FROM read_parquet(?, hive_partitioning = false) m "
        f"LEFT JOIN features fa ON fa.sae_id = m.sae_a AND fa.feature = m.feature_a "
        f"LEFT JOIN features fb ON fb.sae_id = m.sae_b AND fb.feature = m.feature_b "
        f"WHERE m.assigned AND m.score {op} ? ORDER BY m.score {order}, m.feature_a LIMIT ?",
        [files[0], value, MAX_ITEMS // 2 + 1]).fetchall() if files and value is not None else []
    if not rows:
        require(snap, "pair", method, a=sae_a, b=sae_b)
    out = []
    for fa, fb, score, la, lb in rows:
        tag = f"{method} {score:.2f}"
        out.append((sae_a, fa, f"{tag} -> {sae_b}/{fb}" + (f": {la}" if la else "")))
        out.append((sae_b, fb, f"{tag} <- {sae_a}/{fa}" + (f": {lb}" if lb else "")))
    return as_list(snap, f"{sae_a} -> {sae_b} ({method}, {threshold.label})", out)
