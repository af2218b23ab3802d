"""Was it computed? A question about a method or a pair the atlas never computed is refused with the command
that computes it, never answered from nothing (a feature that "dies" at its first layer, 0 orphans, a pair
with no matches, a heatmap of nulls). docs/design.md, Honest answers.

One check, `require(snap, scope, ...)`, serves every query that answers from computed pairs; SCOPES says, per
kind of question, which pairs it needs (how many could have been computed, how many were: one query, or for a
stack's layer pairs the snapshot's own count, kept per snapshot) and the command that computes them. Where nothing could have been computed (a stack of one SAE, an SAE without
siblings) the empty answer is the true one and nothing is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import NotFound
from ..methods import DEFAULT, method as method_info


class NotComputed(NotFound):
    """What was asked for needs a job that has not run on this atlas; the message names the command."""


def command_for(method: str, pairs: str = "adjacent", stack: str | None = None) -> str:
    """The CLI line that computes `method` for `pairs` (atlas match for weights, atlas correlate for activations)."""
    where = f" --stack {stack}" if stack else ""
    if method_info(method).source == "activations":
        return f"atlas correlate --activations FOLDER --pairs {pairs}{where}"
    return f"atlas match --pairs {pairs} --method {method}{where}"


@dataclass(frozen=True)
class Scope:
    """The pairs a kind of question is answered from. `sql` (named parameters: $method and the scope's keys)
    gives one row (possible, computed): pairs that could have been computed, and those that were; or `count`
    gives them from the snapshot (snap, method, keys)."""

    sql: str | None
    message: str  # formatted with method, the keys and command
    command: str  # formatted with method and the keys; {match} / {match_list}: command_for(method, ...)
    count: Callable | None = None


_SIBLINGS = "(SELECT sae_id FROM siblings($sae, by_ := $by))"

_WIDTH_PARTNERS = """(SELECT a.sae_id AS a_id, b.sae_id AS b_id, a.model FROM saes a JOIN saes b ON a.model = b.model
    AND a.hook = b.hook AND coalesce(a.kind, 'sae') = coalesce(b.kind, 'sae') AND a.seed IS NOT DISTINCT FROM b.seed
    AND a.dataset IS NOT DISTINCT FROM b.dataset AND b.d_sae > a.d_sae)"""

SCOPES: dict[str, Scope] = {
    # a stack's layer pairs (lineage, steering, matrix, flow, communities, layer-pairs of one stack)
    "stack": Scope(
        None, "stack {stack} has no layer pairs matched with {method}: run `{command}` first", "{match} --stack {stack}",
        count=lambda snap, method, key: (len(snap.stack(key["stack"])) - 1, snap.matched.get((key["stack"], method), 0))),
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
        "SELECT (SELECT count(*) FROM sibling_pairs() s JOIN saes a ON a.sae_id = s.sae_a JOIN saes b ON b.sae_id = "
        "s.sae_b WHERE s.sae_a < s.sae_b AND a.stack <> b.stack AND a.model LIKE $model), (SELECT count(*) FROM "
        "pair_stats p JOIN sibling_pairs() s USING (sae_a, sae_b) JOIN saes a ON a.sae_id = p.sae_a JOIN saes b ON "
        "b.sae_id = p.sae_b WHERE p.method = $method AND a.stack <> b.stack AND a.model LIKE $model)",
        "no sibling pair (model LIKE '{model}') was matched with {method}: run `{command}` first",
        "atlas match --pairs siblings"),
}


def require(snap, scope: str, method: str = DEFAULT, **key) -> None:
    """NotComputed when the pairs `scope` answers from (for `key`: stack=, a= and b=, sae= and by=, model=)
    could have been computed with `method` but none was."""
    s = SCOPES[scope]
    values = {"method": method, **key}
    if s.count is not None:
        possible, computed = s.count(snap, method, key)
    else:
        names = set(re.findall(r"\$(\w+)", s.sql))
        possible, computed = snap.execute(s.sql, {k: v for k, v in values.items() if k in names}).fetchone()
    if possible <= 0 or computed > 0:
        return
    reverse = ""
    if scope == "pair" and snap.execute("SELECT 1 FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method = ?",
                                       [key["b"], key["a"], method]).fetchone():
        reverse = f" (it was as {key['b']} -> {key['a']}: ask for that order)"
    command = s.command.format(**values, match=command_for(method), match_list=command_for(method, "list"))
    raise NotComputed(s.message.format(**values, command=command, reverse=reverse))


def require_stack_method(snap, sae_id: str, method: str) -> None:
    """NotComputed unless some layer pair of `sae_id`'s stack was matched with `method` (a stack of one SAE has
    no pairs to match: nothing to refuse). No SQL: the snapshot keeps the count."""
    require(snap, "stack", method, stack=snap.sae(sae_id)["stack"])
