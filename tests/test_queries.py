"""The headline questions on the planted-truth atlas: exact answers from ground truth; SQL macros agree."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.errors import NotFound, QueryError
from atlas.methods import Threshold
from atlas.queries import (birth_death, communities, feature_sharing, layer_pairs, lineage, orphans, pair_matrix,
                           permutation_pairs)
from atlas.synth import SynthConfig

from .conftest import TINY, build_atlas, planted_flow

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


def test_lineage_uses_quantiles_and_refuses_bad_input(synth_atlas, truth):
    start = next(f for f in range(TINY.d_sae) if len(_carry_chain(truth, 0, f)) == TINY.n_layers)
    chain = _carry_chain(truth, 0, start)
    with synth_atlas.read() as con:
        q = lineage(con, _ids(0), start, Threshold.of(quantile=1.0))  # every assigned score passes: the planted chain at least
        assert q.threshold == "quantile=1.0 per pair" and set(chain) <= {(n.layer, n.feature) for n in q.nodes}
        mse = lineage(con, _ids(0), start, Threshold.of("decoder_mse"))  # MSE bars are per-pair medians
        assert mse.threshold == "quantile=0.5 per pair"
        with pytest.raises(NotFound, match="9999"):
            lineage(con, _ids(0), 9999)
        with pytest.raises(QueryError, match="sideways"):
            lineage(con, _ids(0), 1, direction="sideways")


@pytest.fixture(scope="module")
def gapped(family, truth, tmp_path_factory):
    """The base stack with one feature missing from layer 2's SAE (its row replaced by an unrelated
    direction, as when an SAE fails to learn a feature): a planted gap in a carried chain."""
    import shutil

    from safetensors.numpy import load_file, save_file

    start = next(f for f in range(TINY.d_sae) if len(_carry_chain(truth, 0, f)) == TINY.n_layers)
    chain = _carry_chain(truth, 0, start)
    root = tmp_path_factory.mktemp("gapped")
    folders = []
    for layer, src in enumerate(family[1][:TINY.n_layers]):
        dst = root / f"layer_{layer}"
        shutil.copytree(src, dst)
        folders.append(dst)
    w = load_file(str(folders[2] / "sae_weights.safetensors"))
    slot = chain[2][1]
    v = np.random.default_rng(1).standard_normal(TINY.d_in).astype(np.float32)
    v /= np.linalg.norm(v)
    w["W_dec"][slot], w["W_enc"][:, slot] = v, v
    save_file(w, str(folders[2] / "sae_weights.safetensors"))
    return build_atlas(root / "atlas.duckdb", folders), chain


def test_lineage_bridges_a_missing_layer_with_a_gap(gapped, truth):
    atlas, chain = gapped
    (l0, f0), (l1, f1), _, (l3, f3) = chain
    with atlas.read() as con:
        lin = lineage(con, _ids(0), f0, max_skip=1)
        assert [(n.layer, n.feature) for n in lin.nodes] == [(l0, f0), (l1, f1), (l3, f3)]
        assert [(e.feature_a, e.feature_b, e.gap) for e in lin.edges] == [(f0, f1, 0), (f1, f3, 1)]
        assert lin.edges[1].score > 0.9 and (lin.birth_layer, lin.death_layer, lin.lifespan) == (0, 3, 4)
        back = lineage(con, _ids(3), f3, max_skip=1)  # the same chain walked backward
        assert [(n.layer, n.feature) for n in back.nodes] == [(l0, f0), (l1, f1), (l3, f3)]
        assert [e.gap for e in back.edges] == [0, 1]
        sql = con.execute("SELECT layer_a, feature_a, layer_b, feature_b, kind, gap FROM lineage_edges(?, ?, max_skip_ := 1)",
                          [_ids(0), f0]).fetchall()  # SQL users get the same gap
        assert sql == [(l0, f0, l1, f1, "carry", 0), (l1, f1, l3, f3, "gap", 1)]
        cut = lineage(con, _ids(0), f0, max_skip=0)  # no skipping: the chain ends where the layer misses it
        assert [(n.layer, n.feature) for n in cut.nodes] == [(l0, f0), (l1, f1)] and cut.death_layer == 1
        # a gap is only for a missing match: the untouched carried chains never skip a layer
        full = [f for f in range(0, TINY.d_sae, 4) if f != f0 and len(_carry_chain(truth, 0, f)) == TINY.n_layers]
        for f in full[:16]:
            other = lineage(con, _ids(0), f, max_skip=2)
            assert [(n.layer, n.feature) for n in other.nodes] == _carry_chain(truth, 0, f)
            assert [e.gap for e in other.edges] == [0] * (TINY.n_layers - 1)


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
            assert counts == {f: len(shared.get(f, ())) for f in range(TINY.d_sae)}


def _planted_sharing(truth, layer):
    """Per SAE of one layer: slot -> (base feature it carries or None, encoder agrees), from ground truth.
    The base SAE holds every base feature with its own encoder (encoder = decoder)."""
    slots = {_ids(layer): {f: (f, True) for f in range(TINY.d_sae)}}
    for t in truth:
        if t["sae_a"] == _ids(layer) and t["layer_b"] == layer and t["kind"] in ("shared", "decoder_only", "orphan"):
            slots.setdefault(t["sae_b"], {})[t["feature_b"]] = (t["feature_a"], t["kind"] == "shared")
    return slots


def test_sharing_of_every_feature_of_every_sibling_is_the_planted_count(synth_atlas, truth):
    """Paulo & Belrose: shared with a sibling = the decoder and the encoder assignments pick the same partner
    (both ≥ tau). Planted: two slots share iff they carry the same base feature and both encoders agree;
    a decoder-only slot (its encoder differs) is shared with no one, though its decoder is matched.
    Past layer 0 the children of splits and merges are near-duplicates of each other (cosine ~0.8), so a
    slot carrying one may rightly pair with a sibling's slot carrying the other: those are left out."""
    near_duplicates: set[int] = set()
    for layer in range(TINY.n_layers):
        slots = _planted_sharing(truth, layer)
        carriers = {}
        for sae, m in slots.items():
            for origin, agree in m.values():
                if origin is not None and agree:
                    carriers[origin] = carriers.get(origin, 0) + 1
        with synth_atlas.read() as con:
            for sae, m in slots.items():
                expected = {f: carriers[o] - 1 if o is not None and agree else 0 for f, (o, agree) in m.items()
                            if o not in near_duplicates}
                got = dict(con.execute("SELECT feature, n_shared FROM feature_sharing(?)", [sae]).fetchall())
                assert {f: n for f, n in got.items() if f in expected} == expected, sae
                assert len(expected) > 0.8 * TINY.d_sae
                assert {f.feature: f.n_shared for f in feature_sharing(con, sae)} == got
                decoder_only = [f for f, (o, agree) in m.items() if o is not None and not agree]
                if decoder_only and sae != _ids(layer):  # ...its decoder is matched to the base feature it carries
                    pairs = dict(con.execute(
                        "SELECT feature_b, feature_a FROM matches WHERE sae_a = ? AND sae_b = ? AND method = "
                        "'decoder_cos' AND assigned AND score >= 0.7", [_ids(layer), sae]).fetchall())
                    assert all(pairs.get(f) == m[f][0] for f in decoder_only)
            # by seed: seed siblings only (dataset A); by dataset: the dataset-B sibling only
            seed = dict(con.execute("SELECT feature, n_shared FROM feature_sharing(?, by_ := 'seed')", [_ids(layer)]).fetchall())
            other = slots[_ids(layer, dataset="B")]
            in_b = {o for o, agree in other.values() if o is not None and agree}
            assert {f: seed[f] + (f in in_b) for f in seed} == dict(
                con.execute("SELECT feature, n_shared FROM feature_sharing(?)", [_ids(layer)]).fetchall())
            n_sib = {by: con.execute("SELECT DISTINCT n_siblings FROM feature_sharing(?, by_ := ?)", [_ids(layer), by]).fetchall()
                     for by in ("any", "seed", "dataset")}
            assert n_sib == {"any": [(3,)], "seed": [(2,)], "dataset": [(1,)]}
        near_duplicates = {t["feature_b"] for t in truth if t["sae_a"] == _ids(layer) and (
            t["kind"] in ("split", "merge") or t["kind"] == "carry" and t["feature_a"] in near_duplicates)}


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
        assert m.layers == list(range(cfg.n_layers)) and m.values[0][3] is None
        assert m.values[0][1] == m.values[1][0] == adjacent[0].matched_frac
        far = [p for p in all_pairs if p.layer_b - p.layer_a == 2]
        assert max(p.matched_frac for p in far) < min(p.matched_frac for p in adjacent)  # farther = fewer matched
        # every answer says whose layers these are: the API's rows, the macros, and the view (stack first)
        everyone = layer_pairs(con) + layer_pairs(con, method="decoder_mse")
        assert {p.stack for p in all_pairs} == {STACK} and len({p.stack for p in everyone}) > 1
        stack_of = dict(con.execute("SELECT sae_id, stack FROM saes").fetchall())
        assert all(p.stack == stack_of[p.sae_a] == stack_of[p.sae_b] for p in everyone)
        view = con.execute("SELECT * FROM layer_pairs LIMIT 1")
        assert view.description[0][0] == "stack"
        assert con.execute("SELECT DISTINCT stack FROM permutation_pairs(stack_ := ?)", [STACK]).fetchall() == [(STACK,)]


def _fate(truth, layer, feature):
    """How a planted feature leaves its layer: carry, split, merge, death, or None at the last layer."""
    return next((t["kind"] for t in truth if t["sae_a"] == _ids(layer) and t["feature_a"] == feature
                 and t["kind"] in ("carry", "split", "merge", "death")), None)


def test_communities_are_the_planted_chains(synth_atlas, truth):
    """A layer-0 feature carried until it dies or the stack ends is one community: exactly its chain
    (its assigned matches, adjacent and two layers apart, link nothing else)."""
    with synth_atlas.read() as con:
        comms = communities(con, STACK)
    by_member = {m: c for c in comms for m in c.members}
    assert sum(c.size for c in comms) == len(by_member)  # communities are disjoint
    checked = 0
    for f in range(TINY.d_sae):
        chain = _carry_chain(truth, 0, f)
        if _fate(truth, *chain[-1]) not in (None, "death"):
            continue  # ends in a split or merge: its community holds the other branch too
        expected = [(_ids(layer), feat) for layer, feat in chain]
        if len(chain) == 1:
            assert expected[0] not in by_member  # dies at once: alone, below min_size
            continue
        c = by_member[expected[0]]
        assert c.members == expected and (c.first_layer, c.last_layer) == (0, chain[-1][0])
        checked += 1
    assert checked > 0.8 * TINY.d_sae


def test_births_and_deaths_per_layer_are_the_planted_ones(synth_atlas, truth):
    with synth_atlas.read() as con:
        flow = birth_death(con, STACK, Threshold.of(tau=0.8))
        sql = con.execute("SELECT layer, births, deaths FROM birth_death(?, tau_ := 0.8)", [STACK]).fetchall()
    expected = planted_flow(truth, [_ids(layer) for layer in range(TINY.n_layers)], TINY.d_sae)
    assert [(r.layer, r.births, r.deaths) for r in flow] == expected == sql
    assert all(n > 0 for _, b, d in expected for n in (b, d) if n is not None)


def test_lineage_over_table_files_gives_the_sql_macro_answer_above_and_below_the_reverse_floor(synth_atlas):
    """Backward steps read the reverse files (scores >= 0.5) or, below that floor, the pairs' own files."""
    def edges(lin):
        return sorted((e.sae_a, e.feature_a, e.sae_b, e.feature_b) for e in lin.edges)

    with synth_atlas.read() as con:
        for tau in (0.7, 0.3):
            for f in range(0, TINY.d_sae, 17):
                for sae in (_ids(0), _ids(2)):
                    lin = lineage(con, sae, f, Threshold.of(tau=tau))
                    macro = con.execute("SELECT sae_a, feature_a, sae_b, feature_b FROM lineage_edges(?, ?, tau_ := ?)",
                                        [sae, f, tau]).fetchall()
                    assert edges(lin) == sorted(macro), (sae, f, tau)
