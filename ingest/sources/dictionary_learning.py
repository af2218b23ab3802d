"""dictionary_learning (saprmarks): a trainSAE sweep writes <save_dir>/trainer_<i>/{ae.pt, config.json}
(the layout of SAEBench and of many sae_lens releases). config.json's `trainer` names the dictionary class,
sizes, k, seed, layer, model (lm_name) and submodule; ae.pt is the module's state dict.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from atlas.sae import SAEError, SAEMeta, SAERecord, SAEWeights

from .files import Count, Int32, Layer, Text, load_json, load_torch, need

WEIGHTS_FILENAME = "ae.pt"

# dict_class -> (architecture, state-dict names of W_enc^T, b_enc, W_dec^T, b_dec; None = stored untransposed)
LAYOUTS = {
    "AutoEncoder": ("standard", "encoder.weight", "encoder.bias", "decoder.weight", "bias"),
    "GatedAutoEncoder": ("gated", "encoder.weight", "gate_bias", "decoder.weight", "decoder_bias"),
    "AutoEncoderTopK": ("topk", "encoder.weight", "encoder.bias", "decoder.weight", "b_dec"),
    "BatchTopKSAE": ("batchtopk", "encoder.weight", "encoder.bias", "decoder.weight", "b_dec"),
    "MatryoshkaBatchTopKSAE": ("batchtopk", "W_enc", "b_enc", "W_dec", "b_dec"),
    "JumpReluAutoEncoder": ("jumprelu", "W_enc", "b_enc", "W_dec", "b_dec"),
}


class Trainer(msgspec.Struct):
    """The fields of config.json's `trainer` the atlas reads, typed (files.check_config)."""

    dict_class: Text | None = None
    activation_dim: Count | None = None
    dict_size: Count | None = None
    k: Count | None = None
    layer: Layer | None = None
    lm_name: Text | None = None
    submodule_name: Text | None = None
    seed: Int32 | None = None


class Config(msgspec.Struct):
    trainer: Trainer | None = None


def detect(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILENAME).exists()


def read(path: Path) -> SAERecord:
    cfg_file, wfile = path / "config.json", path / WEIGHTS_FILENAME
    trainer = load_json(cfg_file, Config).get("trainer")
    if not isinstance(trainer, dict):
        raise SAEError(f"{cfg_file}: no 'trainer' section (dictionary_learning's trainSAE writes one)")
    dict_class = trainer.get("dict_class")
    if dict_class not in LAYOUTS:
        raise SAEError(f"{cfg_file}: dictionary class {dict_class!r} is not supported; known: {', '.join(LAYOUTS)}")
    arch, enc, b_enc, dec, b_dec = LAYOUTS[dict_class]
    t = load_torch(wfile)
    W_enc, W_dec = need(t, enc, wfile), need(t, dec, wfile)
    if enc == "encoder.weight":  # nn.Linear stores [out, in]
        W_enc, W_dec = W_enc.T.copy(), W_dec.T.copy()
    threshold, extra = None, {}
    if arch == "jumprelu":
        threshold = need(t, "threshold", wfile)
    elif arch == "batchtopk" and "threshold" in t and float(t["threshold"].max()) >= 0:
        # the scalar threshold learnt in training, which encode() uses at inference (< 0: never set)
        threshold = np.full(W_dec.shape[0], float(t["threshold"].reshape(-1)[0]), np.float32)
    elif arch == "gated":
        extra = {"b_mag": need(t, "mag_bias", wfile), "r_mag": need(t, "r_mag", wfile)}
    k = trainer.get("k")
    if k is None and "k" in t:
        k = int(t["k"].reshape(-1)[0])
    layer, submodule = trainer.get("layer"), trainer.get("submodule_name")
    # As sae_lens names these SAEs when it loads them from a release (dictionary_learning_1 loader), so
    # both routes agree: short model name, residual-stream hook of the layer.
    resid = layer is not None and (submodule is None or "resid" in submodule)
    meta = SAEMeta(
        model=(trainer.get("lm_name") or "unknown").rsplit("/", 1)[-1],
        hook=f"blocks.{layer}.hook_resid_post" if resid else submodule or "",
        d_in=int(trainer.get("activation_dim") or 0), d_sae=int(trainer.get("dict_size") or 0),
        arch=arch, k=int(k) if k else None, seed=trainer.get("seed"), layer=layer,
        release=path.parent.name, variant=path.name, source=str(path), fmt="dictionary_learning",
        extra={"apply_b_dec_to_input": arch != "jumprelu"},
    )
    return SAERecord(meta, SAEWeights(W_enc=W_enc, W_dec=W_dec, b_enc=need(t, b_enc, wfile),
                                      b_dec=need(t, b_dec, wfile), threshold=threshold, extra=extra))
