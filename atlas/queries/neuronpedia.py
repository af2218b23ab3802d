"""Neuronpedia both ways: links to feature pages (https://www.neuronpedia.org/{modelId}/{sourceId}/{index})
and lists of atlas features (a lineage, an orphan set, a layer pair's matches) as Neuronpedia lists:
items {modelId, layer, index, description} and the quick-list URL that opens them there.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import msgspec

from .common import NEURONPEDIA, check_method, sae_row
from .computed import require, require_stack_method
from .edges import FileEdges
from .lineage import lineage
from .orphans import orphans
from ..errors import NotFound, QueryError

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


def sae_of(con, model_id: str, source_id: str) -> str:
    """The SAE whose neuronpedia_id is modelId/sourceId."""
    row = con.execute("SELECT sae_id FROM saes WHERE neuronpedia_id = ?", [f"{model_id}/{source_id}"]).fetchone()
    if row is None:
        raise NotFound(f"no SAE in this atlas has neuronpedia_id {model_id}/{source_id}; "
                       f"set one with `atlas saes set SAE --neuronpedia-id {model_id}/{source_id}`")
    return row[0]


def quick_list_url(name: str, items: list[ListItem]) -> str:
    features = [{"modelId": i.modelId, "layer": i.layer, "index": i.index, "description": i.description} for i in items]
    return f"{NEURONPEDIA}/quick-list/?name={quote(name)}&features={quote(json.dumps(features, separators=(',', ':')))}"


def as_list(con, name: str, features: list[tuple[str, int, str]]) -> NeuronpediaList:
    """(sae_id, feature, description) -> a Neuronpedia list; features of SAEs without an id are left out."""
    npids = dict(con.execute("SELECT sae_id, neuronpedia_id FROM saes WHERE sae_id IN (SELECT unnest(?))",
                             [sorted({s for s, _, _ in features})]).fetchall())
    items, missing = [], set()
    for sae, f, text in features:
        npid = npids.get(sae)
        if not npid:
            missing.add(sae)
            continue
        model, _, source = npid.partition("/")
        items.append(ListItem(modelId=model, layer=source, index=str(f), description=text))
    truncated = len(items) > MAX_ITEMS
    items = items[:MAX_ITEMS]
    return NeuronpediaList(name=name, items=items, url=quick_list_url(name, items) if items else None,
                           missing=sorted(missing), truncated=truncated)


def lineage_list(con, sae_id: str, feature: int, tau: float = 0.7, method: str = "decoder_cos") -> NeuronpediaList:
    """Every feature of a lineage, in layer order, described by layer and label."""
    require_stack_method(con, sae_id, method)
    lin = lineage(con, sae_id, feature, tau=tau, method=method)
    nodes = sorted(lin.nodes, key=lambda n: (n.layer, n.sae_id, n.feature))
    return as_list(con, f"lineage of {sae_id}/{feature}",
                   [(n.sae_id, n.feature, f"layer {n.layer}" + (f": {n.label}" if n.label else "")) for n in nodes])


def orphans_list(con, sae_id: str, tau: float = 0.7, by: str = "any") -> NeuronpediaList:
    """The orphans of an SAE: features shared with none of its matched siblings."""
    o = orphans(con, sae_id, tau, by=by)
    return as_list(con, f"orphans of {sae_id} ({by}, tau {tau})",
                   [(sae_id, s.feature, "orphan" + (f": {s.label}" if s.label else "")) for s in o.orphans])


def pair_list(con, sae_a: str, sae_b: str, method: str = "decoder_cos", tau: float = 0.7) -> NeuronpediaList:
    """A pair's assigned matches at or above tau (at or below for *_mse), both sides, best first."""
    sae_row(con, sae_a)
    sae_row(con, sae_b)
    m = check_method(method)
    if tau != tau or abs(tau) == float("inf"):  # a finite bar past the method's scores is allowed: none pass it
        raise QueryError(f"tau must be a finite number, got {tau}")
    op, order = (">=", "DESC") if m.higher_is_better else ("<=", "ASC")
    files = FileEdges.of(con).files_of("matches", [(sae_a, sae_b, method)])  # the pair's own file, not the view
    rows = con.execute(
        f"SELECT m.feature_a, m.feature_b, m.score, fa.label, fb.label FROM read_parquet(?, hive_partitioning = false) m "
        f"LEFT JOIN features fa ON fa.sae_id = m.sae_a AND fa.feature = m.feature_a "
        f"LEFT JOIN features fb ON fb.sae_id = m.sae_b AND fb.feature = m.feature_b "
        f"WHERE m.assigned AND m.score {op} ? ORDER BY m.score {order}, m.feature_a LIMIT ?",
        [files[0], tau, MAX_ITEMS // 2 + 1]).fetchall() if files else []
    if not rows:
        require(con, "pair", method, a=sae_a, b=sae_b)
    out = []
    for fa, fb, score, la, lb in rows:
        tag = f"{method} {score:.2f}"
        out.append((sae_a, fa, f"{tag} -> {sae_b}/{fb}" + (f": {la}" if la else "")))
        out.append((sae_b, fb, f"{tag} <- {sae_a}/{fa}" + (f": {lb}" if lb else "")))
    return as_list(con, f"{sae_a} -> {sae_b} ({method}, tau {tau})", out)
