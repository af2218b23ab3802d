"""Each reader on files written in its exact layout, including one written by sae_lens itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from atlas.sae import SAEError
from atlas_ingest.sources import detect_format, read_sae
from atlas_ingest.sources.gemmascope import parse_path


def _weights(d_in=16, d_sae=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
            "W_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
            "b_enc": rng.standard_normal(d_sae).astype(np.float32),
            "b_dec": rng.standard_normal(d_in).astype(np.float32),
            "threshold": rng.uniform(0.1, 1, d_sae).astype(np.float32)}


def test_saelens_written_by_sae_lens_roundtrips(tmp_path):
    from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=32, dtype="float32", device="cpu"))
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn_like(p).abs() if name == "threshold" else torch.randn_like(p))
    sae.cfg.metadata.model_name = "gpt2"
    sae.cfg.metadata.hook_name = "blocks.5.hook_resid_post"
    sae.cfg.metadata.neuronpedia_id = "gpt2-small/5-res-jb"
    sae.save_model(str(tmp_path))
    rec = read_sae(tmp_path, seed=3, dataset="openwebtext")
    m = rec.meta
    assert (m.model, m.site, m.layer, m.arch, m.d_in, m.d_sae) == ("gpt2", "resid", 5, "jumprelu", 16, 32)
    assert (m.seed, m.dataset, m.neuronpedia_id, m.fmt) == (3, "openwebtext", "gpt2-small/5-res-jb", "saelens")
    loaded = SAE.load_from_disk(str(tmp_path), device="cpu")
    np.testing.assert_array_equal(rec.weights.W_dec, loaded.W_dec.detach().numpy())
    np.testing.assert_array_equal(rec.weights.threshold, loaded.threshold.detach().numpy())
    assert m.sae_id == "gpt2-resid5-w32-s3-openwebtext"


def test_saelens_topk_and_old_style_config(tmp_path):
    w = _weights()
    del w["threshold"]
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 32, "architecture": "topk", "k": 4,
                                                    "model_name": "pythia-70m", "hook_name": "blocks.2.hook_mlp_out"}))
    rec = read_sae(tmp_path)
    assert (rec.meta.arch, rec.meta.k, rec.meta.site, rec.meta.layer, rec.meta.model) == ("topk", 4, "mlp", 2, "pythia-70m")


def test_gemmascope_npz_path_parsing(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_20" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **_weights())
    assert detect_format(folder) == "gemmascope"
    rec = read_sae(folder / "params.npz")
    m = rec.meta
    assert (m.model, m.site, m.layer, m.hook, m.arch) == ("gemma-2-2b", "resid", 20, "blocks.20.hook_resid_post", "jumprelu")
    assert m.extra == {"width": "16k", "apply_b_dec_to_input": False}
    # average_l0_71 is what sae_lens's canonical release loads for layer 20: same variant, same Neuronpedia id
    assert (m.variant, m.l0, m.release, m.dataset, m.neuronpedia_id) == (
        "canonical", 71, "google/gemma-scope-2b-pt-res", "monology/pile-uncopyrighted", "gemma-2-2b/20-gemmascope-res-16k")
    assert parse_path(folder)["average_l0"] == 71
    # model, layer and hook can come from the command line when the path says nothing
    flat = tmp_path / "flat"
    flat.mkdir()
    np.savez(flat / "params.npz", **_weights())
    rec = read_sae(flat, model="gemma-2-9b", hook="blocks.3.hook_mlp_out")
    assert (rec.meta.model, rec.meta.site, rec.meta.layer) == ("gemma-2-9b", "mlp", 3)


def test_gemmascope_v2_safetensors(tmp_path):
    save_file(_weights(), str(tmp_path / "params.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "gemma-3-1b", "hook_name": "blocks.7.hook_resid_post"}))
    rec = read_sae(tmp_path)
    assert (rec.meta.model, rec.meta.layer, rec.meta.fmt) == ("gemma-3-1b", 7, "gemmascope")


def test_sparsify_layout(tmp_path):
    folder = tmp_path / "layers.6.mlp"
    folder.mkdir()
    w = _weights(d_in=16, d_sae=64)
    save_file({"encoder.weight": np.ascontiguousarray(w["W_enc"].T), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 4, "num_latents": 64,
                                                 "k": 8, "normalize_decoder": True, "d_in": 16}))
    rec = read_sae(folder, model="EleutherAI/pythia-160m")
    assert detect_format(folder) == "sparsify"
    assert (rec.meta.arch, rec.meta.k, rec.meta.site, rec.meta.layer) == ("topk", 8, "mlp", 6)
    np.testing.assert_array_equal(rec.weights.W_enc, w["W_enc"])


def test_same_weights_hash_alike_across_formats(tmp_path):
    w = _weights()
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 32, "architecture": "jumprelu",
                                                    "metadata": {"hook_name": "blocks.1.hook_resid_post"}}))
    np.savez(tmp_path / "params.npz", **w)
    assert read_sae(tmp_path, fmt="saelens").meta.sha256 == read_sae(tmp_path / "params.npz", hook="blocks.1.hook_resid_post").meta.sha256


# --- bad input: a clear error naming the file and the tensor ---------------------------------------

def _saelens(tmp_path, weights, cfg=None):
    save_file(weights, str(tmp_path / "sae_weights.safetensors"))
    cfg = cfg or {"d_in": 16, "d_sae": 32, "architecture": "jumprelu", "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("mutate, message", [
    (lambda w: w.pop("W_dec"), "tensor 'W_dec' missing"),
    (lambda w: w.update(W_enc=np.zeros((16, 31), np.float32)), "tensor W_enc has shape (16, 31), expected (16, 32)"),
    (lambda w: w.update(b_dec=np.zeros(15, np.float32)), "tensor b_dec has shape (15,)"),
    (lambda w: w["W_dec"].__setitem__((3, 4), np.nan), "tensor W_dec holds 1 NaN/Inf"),
    (lambda w: w["threshold"].__setitem__(0, np.inf), "tensor threshold holds 1 NaN/Inf"),
    (lambda w: w.pop("threshold"), "needs tensor 'threshold'"),
])
def test_bad_tensors_are_refused_by_name(tmp_path, mutate, message):
    w = _weights()
    mutate(w)
    with pytest.raises(SAEError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        read_sae(_saelens(tmp_path, w))
    assert str(tmp_path) in str(e.value)


def test_truncated_and_foreign_files(tmp_path):
    path = _saelens(tmp_path, _weights())
    data = (path / "sae_weights.safetensors").read_bytes()
    (path / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEError, match="sae_weights.safetensors: not a readable safetensors file"):
        read_sae(path)
    (path / "sae_weights.safetensors").write_text("hello, I am not a tensor file")
    with pytest.raises(SAEError, match="not a readable safetensors file"):
        read_sae(path)
    npz = tmp_path / "params.npz"
    np.savez(npz, **_weights())
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(SAEError, match="params.npz: not a readable .npz file"):
        read_sae(npz)


def test_unknown_architecture_config_mismatch_and_missing_path(tmp_path):
    cfg = {"d_in": 16, "d_sae": 32, "architecture": "wavelet", "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
    with pytest.raises(SAEError, match="unknown architecture 'wavelet'"):
        read_sae(_saelens(tmp_path, _weights(), cfg))
    cfg = dict(cfg, architecture="jumprelu", d_in=17)
    with pytest.raises(SAEError, match="config says d_in=17"):
        read_sae(_saelens(tmp_path, _weights(), cfg))
    with pytest.raises(SAEError, match="no such file"):
        read_sae(tmp_path / "nowhere")
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="cfg.json: not valid JSON"):
        read_sae(tmp_path)


def test_release_path_converts_a_loaded_sae_lens_object(tmp_path):
    """`atlas ingest --release` loads through sae_lens (network) and converts the SAE object; the
    conversion is tested on an object sae_lens loaded from disk, and the registry lookup on its yaml."""
    from sae_lens import SAE, TopKSAE, TopKSAEConfig
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from atlas_ingest.sources import finish
    from atlas_ingest.sources.saelens import record_from_state

    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=32, k=4, dtype="float32", device="cpu"))
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "gemma-2-2b", "blocks.20.hook_resid_post"
    sae.save_model(str(tmp_path))
    loaded = SAE.load_from_disk(str(tmp_path), device="cpu")
    state = {k: v.detach().numpy() for k, v in loaded.state_dict().items()}
    rec = finish(record_from_state(loaded.cfg.to_dict(), state, "x", "x"), "release", {})
    assert (rec.meta.arch, rec.meta.k, rec.meta.layer, rec.meta.site) == ("topk", 4, 20, "resid")
    assert rec.meta.sha256 == read_sae(tmp_path).meta.sha256
    release = get_pretrained_saes_directory()["gemma-scope-2b-pt-res-canonical"]
    assert release.neuronpedia_id["layer_20/width_16k/canonical"] == "gemma-2-2b/20-gemmascope-res-16k"
