"""sae_lens layout: cfg.json + sae_weights.safetensors (as written by SAE.save_model), and releases."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atlas.sae import SAEError, SAEMeta, SAERecord, SAEWeights

from .files import load_json, load_safetensors, need

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"


def is_saelens_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILENAME).exists() or ((path / CFG_FILENAME).exists() and not (path / "sae.safetensors").exists())


def read_saelens(path: Path) -> SAERecord:
    cfg = load_json(path / CFG_FILENAME)
    t = load_safetensors(path / WEIGHTS_FILENAME)
    weights = SAEWeights(
        W_enc=need(t, "W_enc", path / WEIGHTS_FILENAME),
        W_dec=need(t, "W_dec", path / WEIGHTS_FILENAME),
        b_enc=need(t, "b_enc", path / WEIGHTS_FILENAME),
        b_dec=need(t, "b_dec", path / WEIGHTS_FILENAME),
        threshold=t.get("threshold"),
    )
    if cfg.get("rescale_acts_by_decoder_norm"):
        weights = fold_decoder_norm(weights)
    meta = meta_from_cfg(cfg, path)
    if (path / SPARSITY_FILENAME).exists():  # log10 feature density, as sae_lens's trainer writes it
        meta.extra["log_density"] = load_safetensors(path / SPARSITY_FILENAME).get("sparsity")
    return SAERecord(meta, weights)


def fold_decoder_norm(w: SAEWeights) -> SAEWeights:
    """sae_lens's `rescale_acts_by_decoder_norm` (top-k SAEs) multiplies pre-activations by ‖W_dec[i]‖ and
    divides them back before decoding. Folded as sae_lens's own fold_W_dec_norm does: unit decoder rows,
    encoder (and threshold) scaled up, the same activations for plain encode/decode."""
    n = np.linalg.norm(w.W_dec, axis=1).astype(np.float32)
    return SAEWeights(W_enc=w.W_enc * n, W_dec=w.W_dec / n[:, None], b_enc=w.b_enc * n, b_dec=w.b_dec,
                      threshold=None if w.threshold is None else w.threshold * n)


def meta_from_cfg(cfg: dict, path: Path) -> SAEMeta:
    """sae_lens ≥ 6 nests model/hook/dataset under `metadata`; older configs keep them at top level."""
    md = {**cfg, **(cfg.get("metadata") or {})}
    if "architecture" not in cfg and "activation_fn_str" not in cfg:
        raise SAEError(f"{path / CFG_FILENAME}: no 'architecture' field")
    arch = cfg.get("architecture") or {"relu": "standard", "topk": "topk"}.get(cfg.get("activation_fn_str"), "standard")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    return SAEMeta(
        model=md.get("model_name") or "unknown",
        hook=md.get("hook_name") or "",
        d_in=int(cfg.get("d_in") or 0),
        d_sae=int(cfg.get("d_sae") or 0),
        arch=arch,
        k=int(k) if k else None,
        seed=md.get("seed"),
        dataset=md.get("dataset_path"),
        source=str(path),
        fmt="saelens",
        neuronpedia_id=md.get("neuronpedia_id"),
        extra={"apply_b_dec_to_input": cfg.get("apply_b_dec_to_input", True)},
    )


def read_release(release: str, sae_id: str) -> SAERecord:
    """A pretrained sae_lens release by name (downloads from the Hugging Face Hub: needs a network)."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise SAEError(f"release {release!r}: not in sae_lens's pretrained registry")
    info = directory[release]
    if sae_id not in info.saes_map:
        raise SAEError(f"release {release!r}: no SAE {sae_id!r} (have e.g. {list(info.saes_map)[:3]})")
    sae = SAE.from_pretrained(release, sae_id, device="cpu")
    rec = record_from_sae(sae, source=f"{release}:{sae_id}")
    rec.meta.neuronpedia_id = rec.meta.neuronpedia_id or (info.neuronpedia_id or {}).get(sae_id)
    rec.meta.model = rec.meta.model if rec.meta.model != "unknown" else info.model
    return rec


def record_from_sae(sae, source: str) -> SAERecord:
    """Convert a loaded sae_lens SAE object (any architecture it knows) to our record."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in sae.state_dict().items()}
    cfg = sae.cfg.to_dict()
    meta = meta_from_cfg(cfg, Path(source))
    meta.source, meta.fmt = source, "saelens"
    weights = SAEWeights(W_enc=sd["W_enc"], W_dec=sd["W_dec"], b_enc=sd["b_enc"], b_dec=sd["b_dec"],
                         threshold=sd.get("threshold"))
    if cfg.get("rescale_acts_by_decoder_norm"):
        weights = fold_decoder_norm(weights)
    return SAERecord(meta, weights)
