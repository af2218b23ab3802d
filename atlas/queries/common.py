"""What several queries share: the saes columns a listing shows, the jobs' SAE check, Neuronpedia links, top tokens."""

from __future__ import annotations

from ..errors import NotFound, QueryError

SAE_COLUMNS = ("sae_id", "model", "hook", "site", "layer", "d_in", "d_sae", "arch", "k", "seed", "dataset",
               "stack", "source", "format", "sha256", "neuronpedia_id", "index_file", "index_factory", "created_at",
               "release", "variant", "kind", "hook_out", "d_out", "l0")

NEURONPEDIA = "https://www.neuronpedia.org"


def require_saes(known, ids) -> None:
    """Refuse (NotFound, as Snapshot.sae does) the first of `ids` that is not among the atlas's SAEs `known`: the
    jobs' check, worded for the command line."""
    for s in ids:
        if s not in known:
            raise NotFound(f"unknown SAE {s!r}: see `atlas saes`")


def check_fraction(name: str, value: float, lo: float = 0.0, hi: float = 1.0) -> None:
    if not lo <= value <= hi:  # NaN fails too
        raise QueryError(f"{name} must be between {lo} and {hi}, got {value}")


def feature_url(neuronpedia_id: str | None, feature: int, embed: bool = False) -> str | None:
    """The feature's Neuronpedia page (https://www.neuronpedia.org/{modelId}/{sourceId}/{index})."""
    if not neuronpedia_id:
        return None
    return f"{NEURONPEDIA}/{neuronpedia_id.strip('/')}/{feature}" + ("?embed=true" if embed else "")


def top_tokens(snap, saes, feats, n: int = 3) -> dict[tuple[str, int], list[str]]:
    """The firing tokens of each (sae, feature)'s top examples, distinct, best first (WordPiece '##' dropped); only
    SAEs with examples are asked."""
    ask = [(s, f) for s, f in zip(saes, feats) if s in snap.examples]
    if not ask:
        return {}
    rows = snap.execute(
        "SELECT e.sae_id, e.feature, list(e.tokens[e.highlight + 1] ORDER BY e.activation DESC) FROM examples e "
        "JOIN (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n USING (sae_id, feature) WHERE e.kind = 'top' "
        "GROUP BY ALL", [[s for s, _ in ask], [f for _, f in ask]]).fetchall()
    out = {}
    for s, f, toks in rows:
        clean = list(dict.fromkeys(t.removeprefix("##").strip() for t in toks if t and t.strip()))
        if clean:
            out[(s, f)] = clean[:n]
    return out
