"""Lookups every query needs: an SAE's row, a feature's existence, a stack's SAEs in layer order, a link."""

from __future__ import annotations

from .. import methods
from ..methods import Method
from ..errors import NotFound, QueryError

SAE_COLUMNS = ("sae_id", "model", "hook", "site", "layer", "d_in", "d_sae", "arch", "k", "seed", "dataset",
               "stack", "source", "format", "sha256", "neuronpedia_id", "index_file", "index_factory", "created_at",
               "release", "variant", "kind", "hook_out", "d_out", "l0")


NEURONPEDIA = "https://www.neuronpedia.org"


def require_saes(known, ids) -> None:
    """Refuse (NotFound, as sae_row does) the first of `ids` that is not among the atlas's SAEs `known`: the
    jobs' check, worded for the command line."""
    for s in ids:
        if s not in known:
            raise NotFound(f"unknown SAE {s!r}: see `atlas saes`")


def sae_row(con, sae_id: str, saes: dict[str, dict] | None = None) -> dict:
    """An SAE's row (SAE_COLUMNS): from `saes`, the rows a snapshot holds, or one point query. The one place
    an unknown SAE is refused."""
    if saes is None:
        row = con.execute(f"SELECT {', '.join(SAE_COLUMNS)} FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
        saes = {sae_id: dict(zip(SAE_COLUMNS, row))} if row is not None else {}
    if sae_id not in saes:
        raise NotFound(f"unknown SAE {sae_id!r}: GET /api/saes lists the SAEs in this atlas")
    return saes[sae_id]


def check_feature(sae: dict, feature: int) -> None:
    if not 0 <= feature < sae["d_sae"]:
        raise NotFound(f"SAE {sae['sae_id']!r} has features 0..{sae['d_sae'] - 1}; there is no feature {feature}")


def stack_saes(con, stack: str, stacks: dict[str, list] | None = None) -> list[tuple[str, int]]:
    """(sae_id, layer) of a stack's SAEs in layer order: from `stacks`, as a snapshot holds them, or one query."""
    rows = stacks.get(stack) if stacks is not None else con.execute(
        "SELECT sae_id, layer FROM saes WHERE stack = ? ORDER BY layer", [stack]).fetchall()
    if not rows:
        raise NotFound(f"unknown stack {stack!r}: GET /api/stacks lists them")
    return rows


def check_method(method: str) -> Method:
    """The registry entry of `method` (a QueryError naming the known ones otherwise)."""
    try:
        return methods.method(method)
    except methods.UnknownMethod as e:
        raise QueryError(str(e)) from None


def check_tau(method: Method, tau: float, name: str = "tau") -> None:
    """A threshold must be a finite score the method can give (cosines in [-1, 1], MSE >= 0)."""
    if not (method.lo <= tau <= method.hi) or tau != tau or abs(tau) == float("inf"):
        raise QueryError(f"{name} for {method.name} must be a number between {method.lo:g} and {method.hi:g}, got {tau}")


def check_fraction(name: str, value: float, lo: float = 0.0, hi: float = 1.0) -> None:
    if not lo <= value <= hi:
        raise QueryError(f"{name} must be between {lo} and {hi}, got {value}")


def feature_url(neuronpedia_id: str | None, feature: int, embed: bool = False) -> str | None:
    """The feature's Neuronpedia page (https://www.neuronpedia.org/{modelId}/{sourceId}/{index})."""
    if not neuronpedia_id:
        return None
    return f"{NEURONPEDIA}/{neuronpedia_id.strip('/')}/{feature}" + ("?embed=true" if embed else "")


def dict_rows(con, sql: str, params=()) -> list[dict]:
    """The rows of a query as dicts by column name."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def top_tokens(con, saes, feats, n: int = 3) -> dict[tuple[str, int], list[str]]:
    """The firing tokens of each (sae, feature)'s top examples, distinct, best first (WordPiece '##' dropped)."""
    rows = con.execute(
        "SELECT e.sae_id, e.feature, list(e.tokens[e.highlight + 1] ORDER BY e.activation DESC) FROM examples e "
        "JOIN (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n USING (sae_id, feature) WHERE e.kind = 'top' "
        "GROUP BY ALL", [list(saes), list(feats)]).fetchall()
    out = {}
    for s, f, toks in rows:
        clean = list(dict.fromkeys(t.removeprefix("##").strip() for t in toks if t and t.strip()))
        if clean:
            out[(s, f)] = clean[:n]
    return out
