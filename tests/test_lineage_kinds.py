"""Lineage edge kinds (carry / split / merge / gap) against planted truth; one definition in SQL, Python
and the table-file lookups."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from atlas.queries import lineage
from atlas.methods import Threshold
from atlas.store.edgeindex import KINDS, kind_codes

from .conftest import TINY, file_edges


def _id(layer):
    return f"synth-resid{layer}-w256-s0-A"


def test_edge_kind_has_one_definition(synth_atlas):
    """The SQL macro, the Python function (both from schema.EDGE_KIND) and the table-file lookups give every row
    one kind."""
    with synth_atlas.read() as con:
        rows = con.execute("SELECT sae_a, feature_a, sae_b, feature_b, assigned, rank, rank_b, "
                           "edge_kind(assigned, rank, rank_b) FROM matches WHERE method = 'decoder_cos'").fetchall()
        files = con.edges
    assert {r[7] for r in rows} == {"carry", "split", "merge", "candidate"}
    vec = KINDS[kind_codes(np.array([r[4] for r in rows]), np.array([r[5] for r in rows]), np.array([r[6] for r in rows]))]
    assert list(vec) == [r[7] for r in rows]
    by_key = {e[:4]: e[8] for a, b, m in files.pairs if m == "decoder_cos"
              for e in file_edges(files, a, range(TINY.d_sae), [b], True, m)}
    assert by_key == {r[:4]: r[7] for r in rows}


@pytest.mark.parametrize("layer", range(TINY.n_layers - 1))
def test_planted_carry_split_merge_come_back_with_their_kinds_and_nothing_else(synth_atlas, truth, layer):
    a, b = _id(layer), _id(layer + 1)
    planted = defaultdict(set)
    for t in truth:
        if t["sae_a"] == a and t["sae_b"] == b and t["kind"] in ("carry", "split", "merge"):
            planted[t["kind"]].add((t["feature_a"], t["feature_b"]))
    with synth_atlas.read() as con:  # tau 0.6: a planted merge child sits at cosine ~0.71 from each parent
        found = dict(((fa, fb), k) for fa, fb, k in con.execute(
            "SELECT feature_a, feature_b, edge_kind(assigned, rank, rank_b) FROM matches WHERE sae_a = ? AND sae_b = ? "
            "AND method = 'decoder_cos' AND score >= 0.6 AND edge_kind(assigned, rank, rank_b) <> 'candidate'",
            [a, b]).fetchall())
    assert planted["split"] and planted["merge"]
    assert set(found) == planted["carry"] | planted["split"] | planted["merge"]
    assert all(found[e] == "carry" for e in planted["carry"])
    for parent in {fa for fa, _ in planted["split"]}:  # one child carries the parent on, the other splits off
        assert sorted(found[e] for e in planted["split"] if e[0] == parent) == ["carry", "split"]
    for child in {fb for _, fb in planted["merge"]}:  # one parent carries on into the child, the other merges
        assert sorted(found[e] for e in planted["merge"] if e[1] == child) == ["carry", "merge"]


def _edges(lin):
    return sorted((e.sae_a, e.feature_a, e.sae_b, e.feature_b, e.kind, e.gap) for e in lin.edges)


@pytest.mark.parametrize("mode", ["default", "all"])
def test_sql_macro_and_table_file_lineages_agree(synth_atlas, truth, mode):
    """lineage() over the edge indexes = over the table files read as Parquet = the SQL macro."""
    events = [(t["sae_a"], t["feature_a"]) for t in truth if t["kind"] in ("split", "merge", "death")
              and t["sae_a"] and t["sae_a"].endswith("s0-A")]
    starts = sorted(set(events[:12] + [(_id(layer), f) for layer in range(TINY.n_layers) for f in range(0, 256, 37)]))
    with synth_atlas.read() as con, synth_atlas.read() as plain:
        plain.edges.indexes = None  # the table files read as Parquet
        for sae, f in starts:
            sql_path = lineage(plain, sae, f, edges=mode, include_sites=False)
            indexed = lineage(con, sae, f, edges=mode, include_sites=False)
            macro = con.execute("SELECT sae_a, feature_a, sae_b, feature_b, kind, gap FROM lineage_edges(?, ?, "
                                "tau_ := 0.7, max_skip_ := 1, edges_ := ?)", [sae, f, mode]).fetchall()
            assert _edges(sql_path) == _edges(indexed) == sorted(macro), (sae, f)
            nodes = con.execute("SELECT sae_id, feature FROM lineage_nodes(?, ?, edges_ := ?)", [sae, f, mode]).fetchall()
            assert sorted((n.sae_id, n.feature) for n in sql_path.nodes) == sorted(nodes)


def test_gap_edges_bridge_a_missing_layer(tmp_path):
    """Feature 5 is missing at layer 1 and back at layer 2: its lineage is one gap edge, in SQL too."""
    from atlas.synth import noisy, unit, write_sae

    from .conftest import build_atlas

    rng = np.random.default_rng(2)
    base = unit(rng.standard_normal((64, 128), dtype=np.float32))
    mid = noisy(rng, base, 0.1)
    mid[5] = unit(rng.standard_normal(128, dtype=np.float32))
    folders = []
    for layer, dec in enumerate([base, mid, noisy(rng, base, 0.1)]):
        folders.append(tmp_path / f"l{layer}")
        write_sae(folders[-1], dec, dec, np.ones(64, np.float32), layer, 0, "A")
    atlas = build_atlas(tmp_path / "gap.duckdb", folders)
    ids = [f"synth-resid{i}-w64-s0-A" for i in range(3)]
    with atlas.read() as con:
        lin = lineage(con, ids[0], 5, direction="forward")
        assert _edges(lin) == [(ids[0], 5, ids[2], 5, "gap", 1)]
        assert "last node at layer 2" in lin.summary and "layer 2: 1 feature (1 gap)" in lin.summary
        macro = con.execute("SELECT sae_a, feature_a, sae_b, feature_b, kind, gap FROM lineage_edges(?, 5)",
                            [ids[2]]).fetchall()
        assert macro == [(ids[0], 5, ids[2], 5, "gap", 1)]
        assert lineage(con, ids[0], 5, direction="forward", max_skip=0).death_layer == 0


def test_summary_line_says_how_a_feature_ends(synth_atlas, truth):
    split = next(t for t in truth if t["kind"] == "split" and t["sae_a"] == _id(1))
    died = next(t for t in truth if t["kind"] == "death" and t["sae_a"] == _id(1))
    with synth_atlas.read() as con:
        s = lineage(con, _id(1), split["feature_a"], Threshold.of(tau=0.6), max_skip=0)
        at2 = next(x for x in s.layers if x.layer == 2)
        assert (at2.nodes, at2.carry, at2.split) == (2, 1, 1)  # the planted split: one child carries on, one splits off
        assert "layer 2: 2 features (1 carry, 1 split)" in s.summary
        d = lineage(con, _id(1), died["feature_a"], Threshold.of(tau=0.6), max_skip=0)
        assert d.ending == "dies" and d.death_layer == 1
        assert d.summary.endswith("last node at layer 1 · dies: no edge from layer 1 passes tau=0.6 to layer 2")
        back = lineage(con, _id(1), died["feature_a"], Threshold.of(tau=0.6), direction="backward")
        assert back.ending == "not followed forward"
        with pytest.raises(Exception, match="edges must be default or all"):
            lineage(con, _id(0), 0, edges="some")


@pytest.mark.parametrize("mode", ["default", "all"])
def test_summary_states_exactly_the_nodes_and_edges_it_comes_with(synth_atlas, mode):
    """The summary, birth and death layers and per-layer counts are read off the answer's own nodes and edges: a
    lineage whose carry chain ends early while split children go on (the old summary said 'last seen' at the
    chain's end) says where its last node is."""
    checked = lasting = 0
    with synth_atlas.read() as con:
        for layer in range(TINY.n_layers):
            for f in range(0, TINY.d_sae, 5):
                lin = lineage(con, _id(layer), f, Threshold.of(tau=0.6), edges=mode, include_sites=False)
                layers = sorted({n.layer for n in lin.nodes})
                assert [x.layer for x in lin.layers] == layers
                assert (lin.birth_layer, lin.death_layer) == (layers[0], layers[-1])
                for x in lin.layers:
                    assert x.nodes == sum(n.layer == x.layer for n in lin.nodes)
                    into = [e.kind for e in lin.edges if int(e.sae_b.split("resid")[1].split("-")[0]) == x.layer]
                    assert {k: getattr(x, k) for k in ("carry", "gap", "split", "merge", "candidate")} == \
                        {k: into.count(k) for k in ("carry", "gap", "split", "merge", "candidate")}
                assert f"last node at layer {lin.death_layer}" in lin.summary
                assert lin.ending == ("survives to the last layer" if lin.death_layer == TINY.n_layers - 1 else "dies")
                chain = _carry_chain_end(lin)
                lasting += chain < lin.death_layer
                checked += 1
    assert checked >= 200 and lasting >= 1  # some lineages outlive their root's carry chain


def _carry_chain_end(lin) -> int:
    """The layer where the root's own carry chain (what the old summary followed) ends."""
    node, layer = (lin.root.sae_id, lin.root.feature), lin.root.layer
    while nxt := [e for e in lin.edges if (e.sae_a, e.feature_a) == node and e.kind in ("carry", "gap")]:
        node = (nxt[0].sae_b, nxt[0].feature_b)
        layer = int(node[0].split("resid")[1].split("-")[0])
    return layer


def test_findings_measure_lineage_size_before_and_after_typed_edges(synth_atlas):
    from click.testing import CliRunner

    from atlas.queries.lineage import lineage_shape
    from atlas_cli import main

    r = CliRunner().invoke(main, ["--atlas", str(synth_atlas.path), "findings", "--lineage-of", _id(1), "--features", "48"])
    assert r.exit_code == 0, r.output
    assert f"lineages of {_id(1)} (first 48 features), edges=all:" in r.output
    assert f"lineages of {_id(1)} (first 48 features), edges=default:" in r.output
    with synth_atlas.read() as con:
        shape = lineage_shape(con, _id(1), 48)
        sizes = {m: [len(lineage(con, _id(1), f, edges=m, include_sites=False).nodes) for f in range(48)]
                 for m in ("all", "default")}
    for mode, s in shape.items():
        assert s["mean_nodes"] == pytest.approx(sum(sizes[mode]) / 48) and s["max_nodes"] == max(sizes[mode])
        assert s["over_big"] == sum(n > 20 for n in sizes[mode]) / 48
    assert shape["default"]["edges"] <= shape["all"]["edges"]
    assert shape["default"]["unassigned_edges"] <= shape["all"]["unassigned_edges"]


def test_flow_origins_equal_planted_mlp_and_attention_truth(tmp_path):
    """Planted MLP-out / attention-out SAEs: every residual feature gets its planted origin class."""
    import pyarrow.parquet as pq

    from atlas.match.pair import MatchParams
    from atlas.queries import flow_origins
    from atlas.queries.selection import select_pairs
    from atlas.synth import GROUND_TRUTH, SynthConfig, generate
    from atlas_ingest.jobs.match import run_match

    from .conftest import build_atlas

    folders = generate(SynthConfig(d_in=512, d_sae=256, n_layers=3, n_seeds=1, second_dataset=False, flow=True,
                                   seed=4), tmp_path / "flow")
    truth = pq.read_table(tmp_path / "flow" / GROUND_TRUTH).to_pylist()
    atlas = build_atlas(tmp_path / "flow.duckdb", folders, match=False)
    with atlas.read() as con:
        pairs = select_pairs(con, "adjacent", stack="synth-resid-w256-jumprelu-s0-A") + select_pairs(con, "flow")
    assert len(pairs) == 2 + 4
    run_match(atlas, pairs, ["decoder_cos"], MatchParams())
    with atlas.read() as con:
        for layer in (1, 2):
            sid = f"synth-resid{layer}-w256-s0-A"
            planted = {t["feature_b"]: t["kind"].split(":", 1)[1] for t in truth
                       if t["kind"].startswith("origin:") and t["sae_b"] == sid}
            assert set(planted.values()) == {"RES", "RES&MLP", "MLP", "ATT", "from nowhere"}
            assert flow_origins(con, sid, list(range(256)), Threshold.of("decoder_cos", 0.5)) == planted
            nodes = lineage(con, sid, next(f for f, o in planted.items() if o == "MLP")).nodes
            assert {n.origin for n in nodes if n.sae_id == sid} == {"MLP"}
