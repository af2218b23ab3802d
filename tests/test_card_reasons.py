"""The card says why the lineage follows each neighbouring match or leaves it out, and why a carry may go to a
weaker partner: planted on two layers whose one-to-one assignment must pass over a feature's best child."""

from __future__ import annotations

import numpy as np

from atlas.queries import lineage
from atlas.queries.card import feature_card
from atlas.synth import noisy, unit, write_sae

from .conftest import build_atlas

N, D = 64, 128


def _planted(tmp_path):
    """Layer 1 is layer 0 with a little noise, except: feature 0 (u) has children 0 (cos 0.75 with u) and 1 (0.8 u +
    0.6 v), and feature 1 (0.6 u + 0.8 v) has child 1 at 0.96 and child 0 at 0.45. The assignment maximises the
    total: 0 -> 0 (0.75) with 1 -> 1 (0.96) beats 0 -> 1 (0.80) with 1 -> 0 (0.45)."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    u, v, w = q[:, 0], q[:, 1], q[:, 2]
    rest = q[:, 3:N + 1].T.astype(np.float32)  # orthonormal to u, v, w and to one another
    layer0 = np.vstack([u, 0.6 * u + 0.8 * v, rest]).astype(np.float32)
    layer1 = np.vstack([0.75 * u + np.sqrt(1 - 0.75 ** 2) * w, 0.8 * u + 0.6 * v, noisy(rng, rest, 0.05)]).astype(np.float32)
    folders = []
    for layer, dec in enumerate([unit(layer0), unit(layer1)]):
        folders.append(tmp_path / f"l{layer}")
        dec = np.ascontiguousarray(dec)  # safetensors writes the buffer as it lies: a column-major one comes back scrambled
        write_sae(folders[-1], dec, dec, np.ones(N, np.float32), layer, 0, "A")
    return build_atlas(tmp_path / "card.duckdb", folders), [f"synth-resid{i}-w{N}-s0-A" for i in range(2)]


def test_card_explains_a_carry_to_the_weaker_child_and_every_left_out_partner(tmp_path):
    atlas, (a, b) = _planted(tmp_path)
    with atlas.read() as con:
        card = feature_card(con, a, 0)
        lin = lineage(con, a, 0, direction="forward")
        child = feature_card(con, b, 1)
    kinds = {(e.feature_b, e.kind) for e in lin.edges}
    assert kinds == {(0, "carry"), (1, "merge")}  # the graph: bold carry to the weaker child, the better one a merge
    refs = {(m.sae_id, m.feature): m for m in card.matches["decoder_cos"] if m.direction == "out"}
    assert refs[(b, 0)].kind == "carry" and refs[(b, 0)].lineage == "carry: the one-to-one assignment pairs them"
    assert refs[(b, 1)].kind == "merge" and refs[(b, 1)].lineage == (
        f"merge: it is this feature's best child, but the assignment carries {a}/1 into it")
    assert abs(refs[(b, 0)].score - 0.75) < 1e-3 and abs(refs[(b, 1)].score - 0.8) < 1e-3
    assert card.lineage_notes == [
        f"The carry to layer 1 goes to {b}/0 (0.750), not {b}/1 (0.800), which scores higher: the assignment is "
        f"one-to-one over the whole layer pair and maximises the total score, and the assignment carries {a}/1 into "
        f"it; {b}/1 is drawn as a merge edge."]
    low = [m for m in card.matches["decoder_cos"] if m.score < 0.7]
    assert low and all(m.lineage.startswith("left out: below τ = 0.7") for m in low)
    # the child's card, from the other side: its best parent is 1 (carry), parent 0 reaches it as a merge
    parents = {m.feature: m for m in child.matches["decoder_cos"] if m.direction == "in" and m.sae_id == a}
    assert parents[1].kind == "carry" and parents[0].kind == "merge"
    assert parents[0].lineage == f"merge: this is its best child, but the assignment carries it into {b}/0"
    assert child.lineage_notes == []  # its carry parent is its best one
