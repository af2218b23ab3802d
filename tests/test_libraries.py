"""Each layout as its own library writes it (sparsify, dictionary_learning, sae_lens), read and encoded
exactly as that library encodes: the tensors and the activations must agree, not just the shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas_cli import main
from atlas.encode import decode, encode_record
from atlas.store import Atlas
from atlas_ingest.sources import read_sae

D_IN = 16


def _x(n=64, d=D_IN, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d), np.float32))


def _randomise(module, seed=0, positive=("threshold",)):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(r.abs() if name.split(".")[-1] in positive else r)


# --- sparsify ---------------------------------------------------------------------------------------

def _sparsify_run(root, **sae_cfg):
    """A trainer run folder as sparsify writes it: config.json (RunConfig) + <hook>[/seedK]/ per SAE."""
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.__main__ import RunConfig

    cfg = SparseCoderConfig(num_latents=64, k=4, **sae_cfg)
    run = RunConfig(sae=cfg, model="EleutherAI/pythia-70m", dataset="EleutherAI/the_pile_deduplicated",
                    hookpoints=["layers.1", "layers.2"], init_seeds=[0, 1], run_name=root.name)
    root.mkdir(parents=True)
    run.save_json(root / "config.json")
    saes = {}
    for hook in run.hookpoints:
        for seed in run.init_seeds:
            torch.manual_seed(seed)
            sae = SparseCoder(D_IN, cfg)
            _randomise(sae, 10 * seed + len(saes))
            sae.save_to_disk(root / hook / f"seed{seed}")
            saes[f"{hook}/seed{seed}"] = sae
    return run, saes


def test_sparsify_run_folders_keep_model_dataset_seed(tmp_path):
    _, saes = _sparsify_run(tmp_path / "pythia-run")
    # save_best writes best/<hook>/ with its own config.json
    from sparsify.__main__ import RunConfig
    best = tmp_path / "pythia-run" / "best"
    best.mkdir()
    RunConfig.load_json(tmp_path / "pythia-run" / "config.json").save_json(best / "config.json")
    saes["layers.1/seed0"].save_to_disk(best / "layers.1" / "seed0")
    atlas = tmp_path / "a.duckdb"
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "ingest", "-r", str(tmp_path / "pythia-run")])
    assert r.exit_code == 0, r.output
    assert "4 added" in r.output and "1 already stored under another id" in r.output  # best == seed0's weights
    with Atlas(atlas).read() as con:
        rows = con.execute("SELECT model, dataset, hook, site, layer, seed, variant, release, k FROM saes ORDER BY hook, seed").fetchall()
    assert rows == [("EleutherAI/pythia-70m", "EleutherAI/the_pile_deduplicated", f"blocks.{l}.hook_resid_post", "resid", l, s, f"seed{s}",
                     "pythia-run", 4) for l in (1, 2) for s in (0, 1)]
    rec = read_sae(tmp_path / "pythia-run" / "layers.2" / "seed1")
    sae, x = saes["layers.2/seed1"], _x()
    out = sae.encode(x)
    want = torch.zeros(len(x), 64).scatter_(1, out.top_indices, out.top_acts)
    torch.testing.assert_close(encode_record(rec, x), want)


@pytest.mark.parametrize("cfg, kind", [({"activation": "groupmax"}, "sae"),
                                       ({"transcode": True}, "transcoder"),
                                       ({"transcode": True, "skip_connection": True}, "skip_transcoder")])
def test_sparsify_groupmax_and_transcoders(tmp_path, cfg, kind):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=64, k=4, **cfg))
    _randomise(sae)
    folder = tmp_path / "layers.3.mlp"
    sae.save_to_disk(folder)
    rec = read_sae(folder, model="EleutherAI/pythia-70m")
    assert (rec.meta.kind, rec.meta.site, rec.meta.layer, rec.meta.arch) == (
        kind, "mlp", 3, cfg.get("activation", "topk"))
    x = _x()
    out = sae.encode(x)
    acts = torch.zeros(len(x), 64).scatter_(1, out.top_indices, out.top_acts)
    torch.testing.assert_close(encode_record(rec, x), acts)
    if kind != "sae":
        assert rec.meta.extra["apply_b_dec_to_input"] is False and (rec.meta.hook, rec.meta.hook_out) == (
            "blocks.3.mlp.hook_in", "blocks.3.hook_mlp_out")  # sparsify's layers.3.mlp: the MLP's input and output
        from sparsify.utils import eager_decode  # sparsify's CPU decoder (its Triton one needs a GPU)

        want = eager_decode(out.top_indices, out.top_acts, sae.W_dec.mT) + sae.b_dec
        if kind == "skip_transcoder":
            want = want + x @ sae.W_skip.mT
        torch.testing.assert_close(decode(rec.weights, acts, x), want.detach(), atol=1e-5, rtol=1e-5)


# --- dictionary_learning ----------------------------------------------------------------------------

def _sweep(save_dir, steps=3):
    """A trainSAE sweep of every architecture, trained a few steps on random activations (CPU)."""
    from dictionary_learning.trainers import (BatchTopKTrainer, GatedSAETrainer, JumpReluTrainer, StandardTrainer,
                                              TopKTrainer)
    from dictionary_learning.training import trainSAE

    common = dict(steps=steps, activation_dim=D_IN, dict_size=32, layer=3, lm_name="EleutherAI/pythia-70m",
                  device="cpu", submodule_name="resid_post_layer_3")
    configs = [dict(common, trainer=StandardTrainer, lr=1e-3, l1_penalty=0.1, warmup_steps=1, sparsity_warmup_steps=1, seed=0),
               dict(common, trainer=TopKTrainer, k=4, warmup_steps=1, seed=1),
               dict(common, trainer=BatchTopKTrainer, k=4, warmup_steps=1, threshold_start_step=0, seed=2),
               dict(common, trainer=JumpReluTrainer, warmup_steps=1, sparsity_warmup_steps=1, seed=3),
               dict(common, trainer=GatedSAETrainer, warmup_steps=1, sparsity_warmup_steps=1, seed=4)]
    data = (_x(32, seed=s) for s in range(10 * steps))
    trainSAE(data, configs, steps=steps, save_dir=str(save_dir), device="cpu")


def _dl_module(folder):
    import json

    from dictionary_learning.dictionary import AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    classes = {c.__name__: c for c in (AutoEncoder, GatedAutoEncoder, JumpReluAutoEncoder, BatchTopKSAE, AutoEncoderTopK)}
    trainer = json.loads((folder / "config.json").read_text())["trainer"]
    sd = torch.load(folder / "ae.pt", weights_only=True)
    cls = classes[trainer["dict_class"]]
    ae = cls(D_IN, 32, trainer["k"]) if "k" in trainer else cls(D_IN, 32)
    ae.load_state_dict(sd)
    return ae


def test_dictionary_learning_sweep_all_architectures(tmp_path):
    sweep = tmp_path / "pythia70m_sweep"
    _sweep(sweep)
    atlas = tmp_path / "a.duckdb"
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "ingest", "-r", str(sweep)])
    assert r.exit_code == 0, r.output
    with Atlas(atlas).read() as con:
        rows = con.execute("SELECT variant, arch, k, seed, model, site, layer, release FROM saes ORDER BY variant").fetchall()
    assert [(v, a, k, s) for v, a, k, s, *_ in rows] == [
        ("trainer_0", "standard", None, 0), ("trainer_1", "topk", 4, 1), ("trainer_2", "batchtopk", 4, 2),
        ("trainer_3", "jumprelu", None, 3), ("trainer_4", "gated", None, 4)]
    assert {tuple(r[4:]) for r in rows} == {("pythia-70m", "resid", 3, "pythia70m_sweep")}
    x = _x()
    for i in range(5):
        folder = sweep / f"trainer_{i}"
        rec, ae = read_sae(folder), _dl_module(folder)
        with torch.no_grad():
            torch.testing.assert_close(encode_record(rec, x), ae.encode(x), atol=1e-5, rtol=1e-5, msg=f"trainer_{i}")


# --- sae_lens: gated and transcoders ----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gated", "transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_sae_lens_gated_and_transcoders(tmp_path, arch):
    from sae_lens import SAE
    from sae_lens.registry import get_sae_class

    sae_cls, cfg_cls = get_sae_class(arch)
    kw = {"d_out": 12} if "transcoder" in arch else {}
    if kw:
        kw["apply_b_dec_to_input"] = False  # sae_lens refuses it for transcoders
    sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=32, dtype="float32", device="cpu", **kw))
    _randomise(sae)
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "gpt2", "blocks.4.ln2.hook_normalized"
    if "transcoder" in arch:
        sae.cfg.metadata.hook_name_out = "blocks.4.hook_mlp_out"
    sae.save_model(str(tmp_path))
    rec = read_sae(tmp_path)
    loaded = SAE.load_from_disk(str(tmp_path), device="cpu")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(encode_record(rec, x), loaded.encode(x), atol=1e-5, rtol=1e-5)
    if "transcoder" in arch:
        assert (rec.meta.kind, rec.meta.site, rec.meta.layer, rec.meta.d_out) == (
            arch.replace("jumprelu_", ""), "mlp", 4, 12)
        with torch.no_grad():
            want = loaded(x)
        torch.testing.assert_close(decode(rec.weights, encode_record(rec, x), x), want, atol=1e-4, rtol=1e-4)
    else:
        assert (rec.meta.arch, rec.meta.kind) == ("gated", "sae")
