"""Feature splitting across widths against the planted width family (kept, split, duplicate, absent); findings."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas.match.widths import match_widths
from atlas.store import Atlas
from atlas.synth import GROUND_TRUTH
from atlas_cli import main

NARROW, MID, WIDE = "synth-resid1-w256-s0-A", "synth-resid1-w512-s0-A", "synth-resid1-w1024-s0-A"


@pytest.fixture(scope="module")
def widths_atlas(tmp_path_factory):
    """The README's commands: a width family (256 → 512 → 1024 at layer 1), then --pairs widths."""
    root = tmp_path_factory.mktemp("widths")
    atlas = root / "w.duckdb"
    run = CliRunner().invoke
    r = run(main, ["--atlas", str(atlas), "synth", "--out", str(root / "synth"), "--d-sae", "256", "--layers", "2",
                   "--seeds", "1", "--no-second-dataset", "--widths", "2x,4x", "--seed", "3"])
    assert r.exit_code == 0, r.output
    r = run(main, ["--atlas", str(atlas), "match", "--pairs", "widths"])
    assert r.exit_code == 0, r.output
    assert "matched 2 width pairs" in r.output
    truth = [t for t in pq.read_table(root / "synth" / GROUND_TRUTH).to_pylist()
             if t["kind"] in ("kept", "split", "duplicate", "absorbed", "novel")]
    return Atlas(atlas), truth


def _rows(con, sae_a):
    return {r[0]: r[1:] for r in con.execute(
        "SELECT feature_a, class, children, combo_cos, best_score FROM widths WHERE sae_a = ?", [sae_a]).fetchall()}


@pytest.mark.parametrize("narrow,wide", [(NARROW, MID), (MID, WIDE)])
def test_planted_width_splits_are_recovered(widths_atlas, narrow, wide):
    atlas, truth = widths_atlas
    mine = [t for t in truth if t["sae_a"] == narrow and t["sae_b"] == wide]
    splits, dups = defaultdict(set), defaultdict(set)
    for t in mine:
        if t["kind"] in ("split", "duplicate"):
            (splits if t["kind"] == "split" else dups)[t["feature_a"]].add(t["feature_b"])
    kept = {t["feature_a"]: t["feature_b"] for t in mine if t["kind"] == "kept"}
    absorbed = {t["feature_a"] for t in mine if t["kind"] == "absorbed"}
    novel = {t["feature_b"] for t in mine if t["kind"] == "novel"}
    assert len(splits) >= 20 and len(dups) >= 5 and kept and absorbed and novel
    with atlas.read() as con:
        rows = _rows(con, narrow)
    found = {f for f, ch in splits.items() if rows[f][0] == "split" and set(rows[f][1]) == ch}
    assert len(found) >= 0.99 * len(splits)
    assert {f for f, r in rows.items() if r[0] == "split"} <= set(splits)  # no false splits
    assert all(rows[f][2] > 0.99 for f in found)  # the parent is the sum of its children
    # near-copies are duplicates, every one with its exact children, and nothing else is
    assert {f: set(r[1]) for f, r in rows.items() if r[0] == "duplicate"} == dups
    assert all(rows[f][0] == "kept" and rows[f][1] == [c] for f, c in kept.items())
    assert all(rows[f][0] == "absent" for f in absorbed)
    children = {c for r in rows.values() for c in r[1]}
    assert not novel & children and children | novel == set(range(int(wide.split("-w")[1].split("-")[0])))


def test_width_tree_macro_follows_splits_down_and_up(widths_atlas):
    atlas, truth = widths_atlas
    kids = defaultdict(set)
    for t in truth:
        if t["kind"] in ("split", "kept"):
            kids[(t["sae_a"], t["feature_a"])].add((t["sae_b"], t["feature_b"]))
    # a 256-wide feature that splits at 512 where at least one child splits again at 1024
    root = next(f for (s, f), ch in list(kids.items()) if s == NARROW and len(ch) > 1 and any(len(kids.get(c, ())) > 1 for c in ch))
    want = {(NARROW, root)} | kids[(NARROW, root)] | {g for c in kids[(NARROW, root)] for g in kids.get(c, ())}
    with atlas.read() as con:
        tree = con.execute("SELECT depth, sae_id, feature, parent_sae, parent_feature, class FROM width_tree(?, ?)",
                           [NARROW, root]).fetchall()
        assert {(s, f) for _, s, f, *_ in tree} == want
        assert {d for d, *_ in tree} == {0, 1, 2}
        assert all((ps, pf) in want and (s, f) in kids.get((ps, pf), ()) for _, s, f, ps, pf, _ in tree if ps)
        assert next(r for r in tree if r[0] == 0)[5] == "split"
        # from a leaf, the tree walks up to the root
        leaf = next((s, f) for d, s, f, *_ in tree if d == 2)
        up = con.execute("SELECT depth, sae_id, feature FROM width_tree(?, ?) WHERE depth < 0 ORDER BY depth",
                         list(leaf)).fetchall()
        assert up[0][1:] == (NARROW, root) and [d for d, *_ in up] == [-2, -1]
    # the notebook's width tree as a networkx graph: the planted children, each edge from its parent
    import networkx as nx

    import atlas as notebook

    with notebook.open(atlas.path) as a:
        g = a.width_tree(NARROW, root).to_networkx()
    assert set(g.nodes) == want and nx.is_arborescence(g)
    assert all(v in kids[u] and d["score"] >= 0.5 for u, v, d in g.edges(data=True))


def test_width_matching_rejects_other_spaces_and_reruns_incrementally(widths_atlas):
    atlas, _ = widths_atlas
    with pytest.raises(ValueError, match="different d_in"):
        match_widths(np.ones((4, 8), np.float32), np.ones((8, 6), np.float32))
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "match", "--pairs", "widths"])
    assert r.exit_code == 0 and "matched 0 width pairs, skipped 2" in r.output
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "match", "--pairs", "widths", "--pair", f"{WIDE}:{NARROW}"])
    assert r.exit_code == 2 and "error:" in r.output and "not width siblings" in r.output


def test_findings_report_consistency_and_widths(synth_atlas, widths_atlas):
    r = CliRunner().invoke(main, ["--atlas", str(synth_atlas.path), "findings"])
    assert r.exit_code == 0, r.output
    assert "consistency, each against random decoders" in r.output and "PW-MCC 0." in r.output and "MMCS 0." in r.output
    with synth_atlas.read() as con:
        for measure in ("pw_mcc", "mmcs"):
            seed, data, rand = con.execute(
                f"SELECT avg({measure}) FILTER (WHERE a.dataset = b.dataset), avg({measure}) FILTER "
                f"(WHERE a.dataset <> b.dataset), avg({measure}_random) FROM pair_stats p JOIN saes a ON "
                "a.sae_id = p.sae_a JOIN saes b ON b.sae_id = p.sae_b WHERE method = 'decoder_cos' AND a.layer = b.layer "
                "AND a.stack <> b.stack").fetchone()
            assert seed > data > rand  # seeds share 70% of features, datasets 40%, random decoders none
    r = CliRunner().invoke(main, ["--atlas", str(widths_atlas[0].path), "findings"])
    assert r.exit_code == 0 and "layer 1 256 -> 512:" in r.output and " duplicate, " in r.output, r.output


def _readme_blocks(section: str) -> tuple[list[str], list[str]]:
    """The sh lines and SQL statements of one README section, as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    sh = [line.split("#")[0].strip() for b in re.findall(r"```sh\n(.*?)```", body, re.S) for line in b.splitlines()]
    sql = [s.strip() for b in re.findall(r"```sql\n(.*?)```", body, re.S) for s in b.split(";") if s.strip()]
    return [line for line in sh if line], [re.sub(r"--[^\n]*", "", s) for s in sql]


def test_readme_width_and_lineage_commands_run_as_written(tmp_path, monkeypatch):
    import shlex

    from litestar.testing import TestClient

    from atlas_api.app import create_app

    monkeypatch.chdir(tmp_path)
    atlas = tmp_path / "atlas.duckdb"
    run = CliRunner().invoke
    widths_sh, widths_sql = _readme_blocks("## Feature splitting across widths")
    lineage_sh, lineage_sql = _readme_blocks("### Lineage of feature X")
    curls = []
    for line in widths_sh + lineage_sh:
        args = shlex.split(line)
        if args[0] == "atlas":
            r = run(main, ["--atlas", str(atlas), *args[1:]])
            assert r.exit_code == 0, (line, r.output)
            if args[1] == "synth":  # the lineage examples need the stack's layer pairs matched too
                assert run(main, ["--atlas", str(atlas), "match", "--pairs", "distance"]).exit_code == 0
        else:
            assert args[0] == "curl"
            curls.append(args[1].split("8000", 1)[1])
    assert len(curls) == 3
    with TestClient(create_app(atlas)) as client:
        for path in curls:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text)
        tree = client.get(curls[0]).json()
        assert tree["root"]["class"] in ("kept", "split", "duplicate", "absent") and tree["summary"]
        assert client.get(curls[1]).json()[0]["d_a"] == 512
        lin = client.get(curls[2]).json()
        assert lin["summary"] and {e["kind"] for e in lin["edges"]} <= {"carry", "split", "merge", "gap"}
    with Atlas(atlas).read() as con:
        rows = con.execute(widths_sql[0]).fetchall()
        assert [r[2] for r in rows if r[0] == 0] == [3] and len(rows) == len(tree["nodes"])
        edges = con.execute(lineage_sql[0]).fetchall()
        assert sorted((e[0], e[1], e[3], e[4], e[7]) for e in edges) == sorted(
            (e["sae_a"], e["feature_a"], e["sae_b"], e["feature_b"], e["kind"]) for e in lin["edges"])
        assert con.execute(lineage_sql[1]).fetchall()


def test_width_pairs_take_the_next_width_and_the_nearest_l0(tmp_path):
    """Two L0 variants at each width (as Gemma Scope ships): each SAE pairs with the next width's variant
    of nearest L0, never with its own width."""
    import duckdb

    from atlas.queries.selection import select_pairs
    from atlas.store.schema import create

    con = duckdb.connect()
    create(con)
    for sid, d, l0 in [("a16-l20", 16, 20), ("a16-l80", 16, 80), ("a32-l25", 32, 25), ("a32-l90", 32, 90),
                       ("a64-l30", 64, 30)]:
        con.execute("INSERT INTO saes (sae_id, model, hook, layer, d_in, d_sae, arch, seed, stack, source, format, "
                    "sha256, l0) VALUES (?, 'm', 'blocks.3.hook_resid_post', 3, 8, ?, 'jumprelu', 0, ?, '', '', '', ?)",
                    [sid, d, f"s{d}-{l0}", l0])
    assert select_pairs(con, "widths") == [("a16-l20", "a32-l25"), ("a16-l80", "a32-l90"),
                                           ("a32-l25", "a64-l30"), ("a32-l90", "a64-l30")]


def test_width_routes_answer_and_refuse_clearly(widths_atlas):
    from litestar.testing import TestClient

    from atlas_api.app import create_app

    atlas, truth = widths_atlas
    with TestClient(create_app(atlas.path)) as c:
        pairs = c.get("/api/width-pairs").json()
        assert [(p["d_a"], p["d_b"]) for p in pairs] == [(256, 512), (512, 1024)]
        with atlas.read() as con:
            assert [(p["kept"], p["split"], p["duplicate"], p["absent"]) for p in pairs] == con.execute(
                "SELECT count(*) FILTER (class = 'kept'), count(*) FILTER (class = 'split'), count(*) FILTER "
                "(class = 'duplicate'), count(*) FILTER (class = 'absent') FROM widths GROUP BY sae_a ORDER BY sae_a").fetchall()
            assert all(p["duplicate"] > 0 for p in pairs)
            dup = con.execute("SELECT feature_a FROM widths WHERE sae_a = ? AND class = 'duplicate' LIMIT 1",
                              [NARROW]).fetchone()[0]
        tree = c.get(f"/api/saes/{NARROW}/features/{dup}/width-tree").json()
        assert tree["root"]["min_child_cos"] >= 0.9 and "duplicated" in tree["summary"] and "near-copies" in tree["summary"]
        assert c.get("/api/width-pairs", params={"model": "gemma%"}).json() == []
        lone = c.get("/api/saes/synth-resid0-w256-s0-A/features/1/width-tree").json()
        assert len(lone["nodes"]) == 1 and "atlas match --pairs widths" in lone["summary"]
        r = c.get(f"/api/saes/{NARROW}/features/9999/width-tree")
        assert r.status_code == 404 and "no feature 9999" in r.json()["error"]
        assert c.get("/api/saes/nope/features/1/width-tree").status_code == 404
        r = c.get(f"/api/saes/{NARROW}/features/1/lineage", params={"edges": "some"})
        assert r.status_code == 400 and "edges" in r.json()["error"]


def test_bad_widths_are_one_clear_line(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["--atlas", str(tmp_path / "a.duckdb"), "synth", "--out", str(tmp_path / "s"), "--widths", "2x,big"])
    assert r.exit_code == 2 and r.output.startswith("error: --widths takes sizes or Nx") and r.output.count("\n") == 1
    r = run(main, ["--atlas", str(tmp_path / "a.duckdb"), "synth", "--out", str(tmp_path / "s"), "--d-sae", "64",
                   "--widths", "32", "--no-ingest"])
    assert r.exit_code == 2 and "widths must grow: 32 after 64" in r.output and not (tmp_path / "s").exists()
    r = run(main, ["--atlas", str(tmp_path / "a.duckdb"), "minilm", "--widths", "x"])
    assert r.exit_code == 2 and "error: --widths takes sizes" in r.output
