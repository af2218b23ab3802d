"""sae_lens layout: cfg.json + sae_weights.safetensors (as written by SAE.save_model); the shared
conversion of a sae_lens config + state dict, which the release reader uses too."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np

from atlas.index import row_norms
from atlas.sae import ARCHS, SAEError, SAEMeta, SAERecord, SAEWeights

from .files import Count, Int32, Text, check_config, load_json, load_safetensors, need

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"

# sae_lens's transcoder architecture names -> (our architecture, kind); any other name is an SAE's architecture.
ARCH_NAMES = {
    "transcoder": ("standard", "transcoder"), "skip_transcoder": ("standard", "skip_transcoder"),
    "jumprelu_transcoder": ("jumprelu", "transcoder"), "jumprelu_skip_transcoder": ("jumprelu", "skip_transcoder"),
}


class Names(msgspec.Struct):
    """The fields sae_lens ≥ 6 nests under `metadata` (older configs keep them at top level)."""

    model_name: Text | None = None
    hook_name: Text | None = None
    hook_name_out: Text | None = None
    seed: Int32 | None = None
    dataset_path: Text | None = None
    neuronpedia_id: Text | None = None


class TopKArgs(msgspec.Struct):
    k: Count | None = None


class Config(Names):
    """The fields of a sae_lens config the atlas reads, typed (files.check_config); the rest are left alone."""

    architecture: Text | None = None
    activation_fn_str: Text | None = None
    activation_fn_kwargs: TopKArgs | None = None
    k: Count | None = None
    d_in: Count | None = None
    d_sae: Count | None = None
    apply_b_dec_to_input: bool | None = None
    rescale_acts_by_decoder_norm: bool | None = None
    metadata: Names | None = None


def detect(path: Path) -> bool:
    return path.is_dir() and ((path / WEIGHTS_FILENAME).exists() or
                              ((path / CFG_FILENAME).exists() and not (path / "sae.safetensors").exists()))


def read(path: Path) -> SAERecord:
    cfg = load_json(path / CFG_FILENAME)
    wfile = path / WEIGHTS_FILENAME
    rec = record_from_state(cfg, load_safetensors(wfile), wfile, path)
    if (path / SPARSITY_FILENAME).exists():  # log10 feature density, as sae_lens's trainer writes it
        rec.meta.extra["log_density"] = load_safetensors(path / SPARSITY_FILENAME).get("sparsity")
    return rec


def record_from_state(cfg: dict, t: dict[str, np.ndarray], wfile: Path | str, source: Path | str) -> SAERecord:
    """Our record from a sae_lens config and state dict (sae_lens tensor names)."""
    meta = meta_from_cfg(cfg, Path(wfile))
    meta.source = str(source)
    wfile = Path(wfile)
    gated = meta.arch == "gated"
    extra = {n: need(t, n, wfile) for n in ARCHS[meta.arch].tensors if n != "threshold"} if meta.arch in ARCHS else {}
    if meta.kind == "skip_transcoder":
        extra["W_skip"] = need(t, "W_skip", wfile)
    weights = SAEWeights(W_enc=need(t, "W_enc", wfile), W_dec=need(t, "W_dec", wfile),
                         b_enc=need(t, "b_gate" if gated else "b_enc", wfile), b_dec=need(t, "b_dec", wfile),
                         threshold=need(t, "threshold", wfile) if "threshold" in t else None, extra=extra)
    if cfg.get("rescale_acts_by_decoder_norm"):
        weights = fold_decoder_norm(weights)
    return SAERecord(meta, weights)


def fold_decoder_norm(w: SAEWeights) -> SAEWeights:
    """sae_lens's `rescale_acts_by_decoder_norm` (top-k SAEs) multiplies pre-activations by ‖W_dec[i]‖ and
    divides them back before decoding. Folded as sae_lens's own fold_W_dec_norm does: unit decoder rows,
    encoder (and threshold) scaled up, the same activations for plain encode/decode."""
    n = row_norms(w.W_dec).astype(np.float32)
    n = np.where(n > 0, n, np.float32(1))  # a dead row stays zero
    return SAEWeights(W_enc=w.W_enc * n, W_dec=w.W_dec / n[:, None], b_enc=w.b_enc * n, b_dec=w.b_dec,
                      threshold=None if w.threshold is None else w.threshold * n, extra=w.extra)


def meta_from_cfg(cfg: dict, path: Path) -> SAEMeta:
    """sae_lens ≥ 6 nests model/hook/dataset under `metadata`; older configs keep them at top level."""
    where = path.parent / CFG_FILENAME if path.suffix else path
    check_config(cfg, Config, where)
    md = {**cfg, **(cfg.get("metadata") or {})}
    if "architecture" not in cfg and "activation_fn_str" not in cfg:
        raise SAEError(f"{where}: no 'architecture' field")
    name = cfg.get("architecture") or {"relu": "standard", "topk": "topk"}.get(cfg.get("activation_fn_str"), "standard")
    arch, kind = ARCH_NAMES.get(str(name), (name, "sae"))
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    return SAEMeta(
        model=md.get("model_name") or "unknown",
        hook=md.get("hook_name") or "",
        hook_out=md.get("hook_name_out") if kind != "sae" else None,
        d_in=int(cfg.get("d_in") or 0),
        d_sae=int(cfg.get("d_sae") or 0),
        arch=arch,
        kind=kind,
        k=int(k) if k else None,
        seed=md.get("seed"),
        dataset=md.get("dataset_path") or None,
        fmt="saelens",
        neuronpedia_id=md.get("neuronpedia_id"),
        extra={"apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", True)) and kind == "sae"},
    )
