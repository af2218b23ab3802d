"""Was it computed? A question about a method or a pair the atlas never computed is refused with the command
that computes it, never answered from nothing (a feature that "dies" at its first layer, 0 orphans, a pair
with no matches, a heatmap of nulls). docs/design.md, Honest answers.

One check, `require(con, scope, ...)`, serves every query that answers from computed pairs; SCOPES says, per
kind of question, which pairs it needs (one query: how many could have been computed, how many were) and the
command that computes them. Where nothing could have been computed (a stack of one SAE, an SAE without
siblings) the empty answer is the true one and nothing is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .common import check_method
from ..errors import NotFound


class NotComputed(NotFound):
    """What was asked for needs a job that has not run on this atlas; the message names the command."""


def command_for(method: str, pairs: str = "adjacent", stack: str | None = None) -> str:
    """The CLI line that computes `method` for `pairs` (atlas match for weights, atlas correlate for activations)."""
    where = f" --stack {stack}" if stack else ""
    if check_method(method).source == "activations":
        return f"atlas correlate --activations FOLDER --pairs {pairs}{where}"
    return f"atlas match --pairs {pairs} --method {method}{where}"


@dataclass(frozen=True)
class Scope:
    """The pairs a kind of question is answered from. `sql` (named parameters: $method and the scope's keys)
    gives one row (possible, computed): pairs that could have been computed, and those that were."""

    sql: str
    message: str  # formatted with method, the keys and command
    command: str  # formatted with method and the keys; {match} / {match_list}: command_for(method, ...)


_SIBLINGS = """(SELECT s.sae_id FROM saes s, (SELECT * FROM saes WHERE sae_id = $sae) me
    WHERE s.model = me.model AND s.hook = me.hook AND s.d_sae = me.d_sae AND s.sae_id <> me.sae_id
      AND ($by = 'any' OR ($by = 'seed' AND s.dataset IS NOT DISTINCT FROM me.dataset AND s.seed IS DISTINCT FROM me.seed)
                       OR ($by = 'dataset' AND s.dataset IS DISTINCT FROM me.dataset)))"""

_WIDTH_PARTNERS = """(SELECT a.sae_id AS a_id, b.sae_id AS b_id, a.model FROM saes a JOIN saes b ON a.model = b.model
    AND a.hook = b.hook AND coalesce(a.kind, 'sae') = coalesce(b.kind, 'sae') AND a.seed IS NOT DISTINCT FROM b.seed
    AND a.dataset IS NOT DISTINCT FROM b.dataset AND b.d_sae > a.d_sae)"""

SCOPES: dict[str, Scope] = {
    # a stack's layer pairs (lineage, steering, matrix, flow, communities, layer-pairs of one stack)
    "stack": Scope(
        "SELECT (SELECT count(*) FROM saes WHERE stack = $stack) - 1, (SELECT count(*) FROM pair_stats p "
        "JOIN saes a ON p.sae_a = a.sae_id JOIN saes b ON p.sae_b = b.sae_id "
        "WHERE p.method = $method AND a.stack = $stack AND b.stack = $stack)",
        "stack {stack} has no layer pairs matched with {method}: run `{command}` first", "{match} --stack {stack}"),
    # layer pairs of every stack (layer-pairs without a stack)
    "layer_pairs": Scope(
        "SELECT (SELECT count(*) FROM (SELECT stack FROM saes GROUP BY stack HAVING count(*) > 1)), "
        "(SELECT count(*) FROM layer_pairs WHERE method = $method)",
        "no layer pair of any stack was matched with {method}: run `{command}` first", "{match}"),
    # one pair, as stored (sae_a -> sae_b)
    "pair": Scope(
        "SELECT 1, (SELECT count(*) FROM pair_stats WHERE sae_a = $a AND sae_b = $b AND method = $method)",
        "pair {a} -> {b} was never matched with {method}{reverse}: run `{command}` first", "{match_list} --pair {a}:{b}"),
    # an SAE's siblings (of kind `by`) matched with it by both decoder_cos and encoder_cos (orphans)
    "siblings": Scope(
        f"SELECT (SELECT count(*) FROM {_SIBLINGS}), (SELECT count(*) FROM (SELECT CASE WHEN sae_a = $sae THEN sae_b "
        f"ELSE sae_a END AS sibling FROM pair_stats WHERE (sae_a = $sae OR sae_b = $sae) AND method IN ('decoder_cos', "
        f"'encoder_cos') GROUP BY 1 HAVING count(DISTINCT method) = 2) m WHERE m.sibling IN {_SIBLINGS})",
        "{sae} has siblings ({by}) but none was matched with it by decoder_cos and encoder_cos: run `{command}` first",
        "atlas match --pairs siblings"),
    # an SAE's narrower and wider siblings (width tree)
    "widths": Scope(
        f"SELECT (SELECT count(*) FROM {_WIDTH_PARTNERS} WHERE $sae IN (a_id, b_id)), "
        f"(SELECT count(*) FROM (SELECT 1 FROM widths WHERE sae_a = $sae OR sae_b = $sae LIMIT 1))",
        "{sae} has narrower or wider siblings but none was matched with it across widths: run `{command}` first",
        "atlas match --pairs widths"),
    # width pairs of the models a LIKE pattern names (width-pairs)
    "model_widths": Scope(
        f"SELECT (SELECT count(*) FROM {_WIDTH_PARTNERS} WHERE model LIKE $model), (SELECT count(*) FROM (SELECT 1 "
        f"FROM widths w JOIN saes a ON a.sae_id = w.sae_a WHERE a.model LIKE $model LIMIT 1))",
        "no narrow and wide SAE pair (model LIKE '{model}') was matched across widths: run `{command}` first",
        "atlas match --pairs widths"),
    # sibling pairs of the models a LIKE pattern names (consistency)
    "model_siblings": Scope(
        "SELECT (SELECT count(*) FROM saes a JOIN saes b ON a.model = b.model AND a.hook = b.hook AND a.d_sae = b.d_sae "
        "AND a.sae_id < b.sae_id AND a.stack <> b.stack WHERE a.model LIKE $model), (SELECT count(*) FROM pair_stats p "
        "JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b WHERE p.method = $method "
        "AND a.stack <> b.stack AND a.hook = b.hook AND a.d_sae = b.d_sae AND a.model LIKE $model)",
        "no sibling pair (model LIKE '{model}') was matched with {method}: run `{command}` first",
        "atlas match --pairs siblings"),
}


def require(con, scope: str, method: str = "decoder_cos", **key) -> None:
    """NotComputed when the pairs `scope` answers from (for `key`: stack=, a= and b=, sae= and by=, model=)
    could have been computed with `method` but none was."""
    s = SCOPES[scope]
    values = {"method": method, **key}
    names = set(re.findall(r"\$(\w+)", s.sql))
    possible, computed = con.execute(s.sql, {k: v for k, v in values.items() if k in names}).fetchone()
    if possible <= 0 or computed > 0:
        return
    reverse = ""
    if scope == "pair" and con.execute("SELECT 1 FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?",
                                       [key["b"], key["a"], method]).fetchone():
        reverse = f" (it was as {key['b']} -> {key['a']}: ask for that order)"
    command = s.command.format(**values, match=command_for(method), match_list=command_for(method, "list"))
    raise NotComputed(s.message.format(**values, command=command, reverse=reverse))


def require_stack_method(con, sae_id: str, method: str) -> None:
    """NotComputed unless some layer pair of `sae_id`'s stack was matched with `method` (a stack of one SAE has
    no pairs to match: nothing to refuse)."""
    row = con.execute("SELECT stack FROM saes WHERE sae_id = ?", [sae_id]).fetchone()
    if row is not None:
        require(con, "stack", method, stack=row[0])


def require_siblings_matched(con, sae_id: str, by: str = "any") -> None:
    """NotComputed when `sae_id` has siblings (of kind `by`) but none was matched with it by both methods
    (orphans would read as 0)."""
    require(con, "siblings", sae=sae_id, by=by)
