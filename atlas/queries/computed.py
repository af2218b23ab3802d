"""Was it computed? A question about a method or a pair the atlas never computed is refused with the command
that computes it, never answered from nothing (a feature that "dies" at its first layer, 0 orphans).

Each check asks the small pair_stats table (one row per pair and method), so it costs a point query.
"""

from __future__ import annotations

from .common import check_method
from .records import NotFound


class NotComputed(NotFound):
    """What was asked for needs a job that has not run on this atlas; the message names the command."""


def command_for(method: str, pairs: str = "adjacent", stack: str | None = None) -> str:
    """The CLI line that computes `method` for `pairs` (atlas match for weights, atlas correlate for activations)."""
    where = f" --stack {stack}" if stack else ""
    if check_method(method).source == "activations":
        return f"atlas correlate --activations FOLDER --pairs {pairs}{where}"
    return f"atlas match --pairs {pairs} --method {method}{where}"


def require_stack_method(con, sae_id: str, method: str) -> None:
    """NotComputed unless some layer pair of `sae_id`'s stack was matched with `method` (a stack of one SAE has
    no pairs to match: nothing to refuse)."""
    stack, n_saes, n_pairs = con.execute(
        "SELECT me.stack, (SELECT count(*) FROM saes WHERE stack = me.stack), (SELECT count(*) FROM pair_stats p "
        "JOIN saes a ON p.sae_a = a.sae_id JOIN saes b ON p.sae_b = b.sae_id WHERE p.method = ? AND a.stack = me.stack "
        "AND b.stack = me.stack) FROM saes me WHERE me.sae_id = ?", [method, sae_id]).fetchone() or (None, 0, 0)
    if stack is not None and n_saes > 1 and n_pairs == 0:
        raise NotComputed(f"stack {stack} has no layer pairs matched with {method}: run "
                          f"`{command_for(method, 'adjacent', stack)}` first")


def require_siblings_matched(con, sae_id: str, siblings: list[str], n_matched: int) -> None:
    """NotComputed when `sae_id` has siblings but none was matched with it (orphans would read as 0)."""
    if siblings and n_matched == 0:
        raise NotComputed(f"{sae_id} has {len(siblings)} sibling(s) but none was matched with it (decoder_cos and "
                          f"encoder_cos): run `atlas match --pairs siblings` first")
