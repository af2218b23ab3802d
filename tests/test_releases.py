"""`atlas ingest --release` end to end, offline, on a Hugging Face cache built here; and Gemma Scope
download trees through `ingest -r` giving the same SAEs (one per weights, whatever the route)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
from click.testing import CliRunner

from atlas_cli import main
from atlas.queries.findings import findings
from atlas.store import Atlas

from .hub import cache_release, offline_hub, snapshot, write_gemma_scope


def _atlas_cli(args):
    """The CLI as a user types it (`atlas ARGS`), in this process: sae_lens imports once per test session."""
    return CliRunner().invoke(main, args)


def _rows(atlas: Path, sql: str, params=()):
    with duckdb.connect(str(atlas), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_readme_release_example_offline(tmp_path, monkeypatch):
    """The README's `atlas ingest --release gemma-scope-2b-pt-res-canonical`, as written, from the cache."""
    hf = tmp_path / "hf"
    n = cache_release(hf, "gemma-scope-2b-pt-res-canonical")
    offline_hub(monkeypatch, hf)
    monkeypatch.chdir(tmp_path)
    r = _atlas_cli(["ingest", "--release", "gemma-scope-2b-pt-res-canonical"])
    assert r.exit_code == 0, r.output
    assert f"{n} added" in r.output
    atlas = tmp_path / "atlas.duckdb"
    row = _rows(atlas, "SELECT sae_id, model, site, layer, hook, variant, l0, neuronpedia_id, format, source, dataset "
                       "FROM saes WHERE neuronpedia_id = 'gemma-2-2b/20-gemmascope-res-16k'")
    assert row == [("gemma-2-2b-resid20-w16-canonical-pile-uncopyrighted", "gemma-2-2b", "resid", 20,
                    "blocks.20.hook_resid_post", "canonical", 71.0, "gemma-2-2b/20-gemmascope-res-16k", "release",
                    "gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical", "monology/pile-uncopyrighted")]
    stacks = dict(_rows(atlas, "SELECT stack, count(*) FROM saes GROUP BY 1"))
    assert stacks["gemma-2-2b-resid-w16-jumprelu-sNone-monology_pile-uncopyrighted-canonical"] == 26
    # one SAE per registry entry, ids unique and readable
    assert _rows(atlas, "SELECT count(DISTINCT sae_id), count(DISTINCT sha256) FROM saes") == [(n, n)]

    # the same weights as a folder tree (the cache snapshot is the repo's download tree): merged, not doubled
    snap = hf / "hub" / "models--google--gemma-scope-2b-pt-res" / "snapshots"
    tree = tmp_path / "gemma-scope-2b-pt-res"
    next(snap.iterdir()).rename(tree)
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "ingest", "-r", str(tree / "layer_20")])
    assert r.exit_code == 0, r.output
    assert "0 added, 0 replaced, 2 unchanged" in r.output  # same metadata by both routes: the same ids
    assert _rows(atlas, "SELECT count(*) FROM saes") == [(n,)]

    # a Gemma Scope transcoder by name: kind, input and output hooks from sae_lens's transcoder loader
    write_gemma_scope(snapshot(hf, "google/gemma-scope-2b-pt-transcoders"), "layer_20/width_16k/average_l0_11",
                      seed=1000)
    r = _atlas_cli(["ingest", "--release", "gemma-scope-2b-pt-transcoders:layer_20/width_16k/average_l0_11"])
    assert r.exit_code == 0 and "1 added" in r.output, r.output
    assert _rows(atlas, "SELECT kind, hook, hook_out, site, layer, d_out, neuronpedia_id FROM saes WHERE kind <> 'sae'") == [
        ("transcoder", "blocks.20.ln2.hook_normalized", "blocks.20.hook_mlp_out", "mlp", 20, 8,
         "gemma-2-2b/20-gemmascope-transcoder-16k")]

    # a second run skips what is stored without touching the (now absent) cache files
    r = _atlas_cli(["ingest", "--release", "gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical"])
    assert r.exit_code == 0 and "0 added, 0 replaced, 1 unchanged" in r.output, r.output
    # and one clear line where the cache lacks a file the Hub would have to send; nothing stored
    r = _atlas_cli(["ingest", "--release", "gemma-scope-2b-pt-mlp-canonical:layer_3/width_16k/canonical"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "not in the Hugging Face cache" in r.output and "google/gemma-scope-2b-pt-mlp" in r.output
    r = _atlas_cli(["ingest", "--release", "no-such-release"])
    assert r.exit_code == 2 and "not in sae_lens's pretrained registry" in r.output
    r = _atlas_cli(["ingest", "--release", "gemma-scope-2b-pt-res-canonical:layer_99/width_16k/canonical"])
    assert r.exit_code == 2 and "no SAE 'layer_99/width_16k/canonical'" in r.output
    assert _rows(atlas, "SELECT count(*) FROM saes") == [(n + 1,)]


def test_gemma_scope_tree_res_mlp_att_transcoder_it_and_embedding(tmp_path, monkeypatch):
    """`ingest -r` over a Gemma Scope download tree: one SAE per file with the right model, site, kind and
    variant; sources stored resolved so `atlas match` works from any directory."""
    root = tmp_path / "downloads"
    files = {
        "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_22": ("gemma-2-2b", "resid", 20, "sae", "average_l0_22"),
        "gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71": ("gemma-2-2b", "resid", 20, "sae", "canonical"),
        "gemma-scope-2b-pt-res/layer_21/width_16k/average_l0_70": ("gemma-2-2b", "resid", 21, "sae", "canonical"),
        "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6": ("gemma-2-2b", "resid", -1, "sae", "average_l0_6"),
        "gemma-scope-2b-pt-mlp/layer_20/width_16k/average_l0_50": ("gemma-2-2b", "mlp", 20, "sae", "average_l0_50"),
        "gemma-scope-2b-pt-att/layer_20/width_16k/average_l0_80": ("gemma-2-2b", "attn", 20, "sae", "average_l0_80"),
        "gemma-scope-2b-pt-transcoders/layer_20/width_16k/average_l0_11": ("gemma-2-2b", "mlp", 20, "transcoder", "average_l0_11"),
        "gemma-scope-9b-it-res/layer_20/width_16k/average_l0_91": ("gemma-2-9b-it", "resid", 20, "sae", "canonical"),
    }
    for i, folder in enumerate(files):
        write_gemma_scope(root, folder, d_in=6 if "-att" in folder else 8, seed=i)
    monkeypatch.chdir(tmp_path)
    atlas = tmp_path / "a.duckdb"
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "ingest", "-r", "downloads"])
    assert r.exit_code == 0, r.output
    assert f"{len(files)} added" in r.output
    got = {Path(src).parent.relative_to(root.resolve()).as_posix(): rest for src, *rest in _rows(
        atlas, "SELECT source, model, site, layer, kind, variant FROM saes")}
    assert got == {k: list(v) for k, v in files.items()}
    tc = _rows(atlas, "SELECT hook, hook_out, neuronpedia_id FROM saes WHERE kind = 'transcoder'")
    assert tc == [("blocks.20.ln2.hook_normalized", "blocks.20.hook_mlp_out", "gemma-2-2b/20-gemmascope-transcoder-16k")]
    emb = _rows(atlas, "SELECT hook FROM saes WHERE layer = -1")
    assert emb == [("hook_embed",)]
    # sae_lens rescales embedding SAEs by sqrt(d_model); the tree route does the same
    w = np.load(root / "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6/params.npz")
    from atlas_ingest.sources import read_sae
    rec = read_sae(root / "gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6")
    np.testing.assert_allclose(rec.weights.W_dec, w["W_dec"] * np.sqrt(2304), rtol=1e-6)

    # from another directory, the stored (resolved) sources still lead to the weights
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "match", "--pairs", "adjacent"])
    assert r.exit_code == 0, r.output
    assert "matched 1 pair-methods" in r.output  # canonical layer 20 -> 21: the one stack with two layers
    # the two L0 variants of layer 20 are siblings (same hook and width, other sparsity)
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "match", "--pairs", "siblings"])
    assert r.exit_code == 0 and "matched 2 pair-methods" in r.output, r.output
    with Atlas(atlas).read() as con:
        pair = con.execute("SELECT a.variant, b.variant FROM pair_stats p JOIN saes a ON a.sae_id = p.sae_a "
                           "JOIN saes b ON b.sae_id = p.sae_b WHERE p.method = 'decoder_cos' AND a.layer = 20").fetchall()
        assert sorted(pair[0]) == ["average_l0_22", "canonical"]
        assert [r["relation"] for r in findings(con)["siblings"]] == ["variant"]


def test_one_full_size_gemma_scope_sae_by_name(tmp_path, monkeypatch):
    """The README's single-SAE example at Gemma Scope's real size (2304 x 16384), as sae_lens sizes it."""
    from .hub import gemma_scope_params, snapshot

    hf = tmp_path / "hf"
    folder = snapshot(hf, "google/gemma-scope-2b-pt-res") / "layer_20/width_16k/average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemma_scope_params(2304, 16384, seed=0))
    offline_hub(monkeypatch, hf)
    atlas = tmp_path / "a.duckdb"
    r = _atlas_cli(["--atlas", str(atlas), "ingest", "--release",
                    "gemma-scope-2b-pt-res-canonical:layer_20/width_16k/canonical"])
    assert r.exit_code == 0 and "1 added" in r.output, r.output
    assert _rows(atlas, "SELECT sae_id, d_in, d_sae, layer, l0, neuronpedia_id FROM saes") == [
        ("gemma-2-2b-resid20-w16384-canonical-pile-uncopyrighted", 2304, 16384, 20, 71.0, "gemma-2-2b/20-gemmascope-res-16k")]


class _Activations:
    """What dictionary_learning's ActivationBuffer gives trainSAE: batches, and a `config` it saves."""

    config = {"d_submodule": 16, "io": "out", "n_ctxs": 8, "ctx_len": 128, "refresh_batch_size": 8,
              "out_batch_size": 32, "device": "cpu"}

    def __iter__(self):
        rng = np.random.default_rng(0)
        while True:
            yield __import__("torch").from_numpy(rng.standard_normal((32, 16), np.float32))


def test_saebench_release_and_its_folder_are_one_sae(tmp_path, monkeypatch):
    """A SAEBench release (dictionary_learning files, sae_lens's dictionary_learning_1 loader) and the same
    trainSAE folder read directly: the same weights, so one SAE, with the release's Neuronpedia id."""
    from dictionary_learning.trainers import GatedSAETrainer
    from dictionary_learning.training import trainSAE

    release = "sae_bench_pythia70m_sweep_gated_ctx128_0730"
    hf = tmp_path / "hf"
    sweep = snapshot(hf, "canrager/lm_sae") / "pythia70m_sweep_gated_ctx128_0730" / "resid_post_layer_3"
    trainSAE(_Activations(), [dict(trainer=GatedSAETrainer, steps=2, activation_dim=16, dict_size=32, layer=3,
                                   lm_name="EleutherAI/pythia-70m-deduped", warmup_steps=1, sparsity_warmup_steps=1,
                                   seed=0, device="cpu", submodule_name="resid_post_layer_3")],
             steps=2, save_dir=str(sweep), device="cpu")
    offline_hub(monkeypatch, hf)
    atlas = tmp_path / "a.duckdb"
    r = _atlas_cli(["--atlas", str(atlas), "ingest", "--release", f"{release}:blocks.3.hook_resid_post__trainer_0"])
    assert r.exit_code == 0 and "1 added" in r.output, r.output
    r = _atlas_cli(["--atlas", str(atlas), "ingest", "-r", str(sweep)])
    assert r.exit_code == 0 and "1 already stored under another id" in r.output, r.output
    assert _rows(atlas, "SELECT model, hook, layer, arch, variant, neuronpedia_id FROM saes") == [
        ("pythia-70m-deduped", "blocks.3.hook_resid_post", 3, "gated", "trainer_0",
         "pythia-70m-deduped/3-sae_bench-gated-res-4k__trainer_0_step_final")]
