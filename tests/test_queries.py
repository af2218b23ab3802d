"""The headline questions on the planted-truth atlas: exact answers from ground truth; SQL macros agree."""

from __future__ import annotations

import pytest

from atlas.queries import (NotFound, QueryError, communities, layer_pairs, lineage, orphans, pair_matrix,
                           permutation_pairs)
from atlas.synth import SynthConfig

from .conftest import TINY

STACK = "synth-resid-w256-jumprelu-s0-A"


def _ids(layer, seed=0, dataset="A"):
    return f"synth-resid{layer}-w256-s{seed}-{dataset}"


def _carry_chain(truth, layer, feature):
    """Follow ground-truth carry edges forward from (layer, feature)."""
    chain = [(layer, feature)]
    while True:
        nxt = [t for t in truth if t["kind"] == "carry" and t["layer_a"] == chain[-1][0]
               and t["feature_a"] == chain[-1][1] and t["sae_a"] == _ids(chain[-1][0])]
        if not nxt:
            return chain
        chain.append((nxt[0]["layer_b"], nxt[0]["feature_b"]))


def test_lineage_of_a_carried_feature_is_its_planted_chain(synth_atlas, truth):
    # a layer-0 feature carried through every layer
    start = next(f for f in range(TINY.d_sae) if len(_carry_chain(truth, 0, f)) == TINY.n_layers)
    chain = _carry_chain(truth, 0, start)
    with synth_atlas.read() as con:
        lin = lineage(con, _ids(0), start)
        assert [(n.layer, n.feature) for n in lin.nodes] == chain
        assert (lin.birth_layer, lin.death_layer, lin.lifespan) == (0, TINY.n_layers - 1, TINY.n_layers)
        assert all(e.gap == 0 and e.assigned and e.score >= 0.7 for e in lin.edges) and len(lin.edges) == len(chain) - 1
        # the same answer from the middle, and from SQL
        mid = lineage(con, _ids(2), chain[2][1])
        assert [(n.layer, n.feature) for n in mid.nodes] == chain
        sql = con.execute("SELECT layer, feature FROM lineage_nodes(?, ?)", [_ids(2), chain[2][1]]).fetchall()
        assert sql == chain


def test_lineage_shows_splits_deaths_and_births(synth_atlas, truth):
    split = next(t for t in truth if t["kind"] == "split" and t["sae_a"] == _ids(1))
    children = sorted(t["feature_b"] for t in truth if t["kind"] == "split" and t["sae_a"] == _ids(1)
                      and t["feature_a"] == split["feature_a"])
    born = next(t for t in truth if t["kind"] == "birth" and t["sae_b"] == _ids(2))
    died = next(t for t in truth if t["kind"] == "death" and t["sae_a"] == _ids(1))
    with synth_atlas.read() as con:
        lin = lineage(con, _ids(1), split["feature_a"], direction="forward", max_skip=0)
        at2 = sorted(n.feature for n in lin.nodes if n.layer == 2)
        assert at2 == children  # both children of the split, one assigned and one not
        assert sorted(e.assigned for e in lin.edges if e.sae_b == _ids(2)) == [False, True]
        assert lineage(con, _ids(2), born["feature_b"], direction="backward").birth_layer == 2
        dead = lineage(con, _ids(1), died["feature_a"], direction="forward", max_skip=0)
        assert dead.death_layer == 1 and dead.nodes == [dead.root]


def test_lineage_uses_gaps_and_quantiles(synth_atlas, truth):
    start = next(f for f in range(TINY.d_sae) if len(_carry_chain(truth, 0, f)) == TINY.n_layers)
    with synth_atlas.read() as con:
        q = lineage(con, _ids(0), start, quantile=1.0)
        assert q.threshold == "quantile=1.0 per pair" and len(q.nodes) >= TINY.n_layers
        mse = lineage(con, _ids(0), start, method="decoder_mse")  # MSE bars are per-pair quantiles
        assert mse.threshold == "quantile=0.5 per pair"
        with pytest.raises(NotFound, match="no feature 9999"):
            lineage(con, _ids(0), 9999)
        with pytest.raises(QueryError, match="direction must be"):
            lineage(con, _ids(0), 1, direction="sideways")


def test_orphans_equal_the_planted_truth(synth_atlas, truth):
    """Base-stack feature i of layer L is shared with sibling S iff S kept it and its encoder agrees."""
    for layer in range(TINY.n_layers):
        sibs = {t["sae_b"] for t in truth if t["sae_a"] == _ids(layer) and t["layer_b"] == layer and t["kind"] in
                ("shared", "decoder_only", "orphan")}
        shared = {}
        for t in truth:
            if t["sae_a"] == _ids(layer) and t["sae_b"] in sibs and t["kind"] == "shared":
                shared.setdefault(t["feature_a"], set()).add(t["sae_b"])
        expected = sorted(set(range(TINY.d_sae)) - set(shared))
        with synth_atlas.read() as con:
            got = orphans(con, _ids(layer))
            assert [o.feature for o in got.orphans] == expected
            assert got.n_orphans == len(expected) and len(got.siblings) == len(sibs) == 3
            sql = con.execute("SELECT feature, n_shared FROM feature_sharing(?) WHERE n_shared = 0",
                              [_ids(layer)]).fetchall()
            assert [f for f, _ in sql] == expected
            counts = dict(con.execute("SELECT feature, n_shared FROM feature_sharing(?)", [_ids(layer)]).fetchall())
            assert all(counts[f] == len(s) for f, s in shared.items())


def test_decoder_only_agreement_is_not_shared(synth_atlas, truth):
    """Paulo & Belrose: the encoder must pick the same partner too."""
    t = next(t for t in truth if t["kind"] == "decoder_only" and t["sae_a"] == _ids(0) and t["sae_b"] == _ids(0, seed=1))
    with synth_atlas.read() as con:
        row = con.execute("SELECT n_shared FROM feature_sharing(?) WHERE feature = ?", [_ids(0, 1), t["feature_b"]]).fetchone()
        dec = con.execute("SELECT count(*) FROM matches WHERE sae_a = ? AND sae_b = ? AND feature_a = ? AND "
                          "feature_b = ? AND method = 'decoder_cos' AND assigned", [_ids(0), _ids(0, 1), t["feature_a"],
                                                                                  t["feature_b"]]).fetchone()[0]
    assert dec == 1  # the decoders agree...
    shared_elsewhere = sum(1 for u in truth if u["sae_b"] in (_ids(0, 2), _ids(0, dataset="B")) and u["kind"] == "shared"
                           and u["feature_a"] == t["feature_a"])
    assert row[0] <= shared_elsewhere  # ...but seed 0 does not count as a sharing sibling


def test_permutation_only_pairs(synth_atlas):
    cfg: SynthConfig = TINY
    changed = cfg.death_frac + cfg.split_frac + 2 * cfg.merge_frac  # features that are not plainly carried
    with synth_atlas.read() as con:
        all_pairs = layer_pairs(con, STACK)
        adjacent = [p for p in all_pairs if p.layer_b - p.layer_a == 1]
        assert all(abs(p.matched_frac - (1 - cfg.death_frac - cfg.merge_frac)) < 0.02 for p in adjacent)
        perm = permutation_pairs(con, STACK, min_frac=0.9, min_score=0.9)
        # adjacent pairs keep ~1 - changed > 0.9 of features at cosine ~0.99; distance-2 pairs lose twice that
        assert {(p.layer_a, p.layer_b) for p in perm} == {(i, i + 1) for i in range(cfg.n_layers - 1)}
        assert all(p.frac_at_min_score >= 1 - changed - 0.02 for p in perm)
        sql = con.execute("SELECT layer_a, layer_b FROM permutation_pairs(stack_ := ?) ORDER BY ALL", [STACK]).fetchall()
        assert sql == [(p.layer_a, p.layer_b) for p in perm]
        m = pair_matrix(con, STACK)
        assert m["layers"] == list(range(cfg.n_layers)) and m["values"][0][3] is None
        assert m["values"][0][1] == m["values"][1][0] == adjacent[0].matched_frac
        far = [p for p in all_pairs if p.layer_b - p.layer_a == 2]
        assert max(p.matched_frac for p in far) < min(p.matched_frac for p in adjacent)  # farther = fewer matched


def test_communities_follow_lineages(synth_atlas):
    with synth_atlas.read() as con:
        comms = communities(con, STACK)
    assert comms[0].size >= TINY.n_layers and comms[0].first_layer == 0
    assert sum(c.size for c in comms) <= TINY.d_sae * TINY.n_layers


def test_in_memory_edge_index_gives_the_sql_answer(synth_atlas):
    from atlas.queries.lineage import EdgeIndex

    with synth_atlas.read() as con:
        index = EdgeIndex(con, "decoder_cos", floor=0.5)
        for f in range(0, TINY.d_sae, 17):
            for sae in (_ids(0), _ids(2)):
                assert lineage(con, sae, f, index=index) == lineage(con, sae, f)
        # below the index's floor, lineage falls back to SQL and still answers
        assert lineage(con, _ids(1), 3, tau=0.3, index=index) == lineage(con, _ids(1), 3, tau=0.3)
