"""EleutherAI sparsify layout: one folder per hookpoint with cfg.json + sae.safetensors."""

from __future__ import annotations

from pathlib import Path

from atlas.sae import SAEMeta, SAERecord, SAEWeights

from .files import load_json, load_safetensors, need

WEIGHTS_FILENAME = "sae.safetensors"


def is_sparsify_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILENAME).exists()


def read_sparsify(path: Path) -> SAERecord:
    cfg = load_json(path / "cfg.json")
    wfile = path / WEIGHTS_FILENAME
    t = load_safetensors(wfile)
    enc = need(t, "encoder.weight", wfile)  # [num_latents, d_in]
    weights = SAEWeights(W_enc=enc.T.copy(), W_dec=need(t, "W_dec", wfile),
                         b_enc=need(t, "encoder.bias", wfile), b_dec=need(t, "b_dec", wfile))
    arch = cfg.get("activation", "topk")
    meta = SAEMeta(
        model=cfg.get("model") or cfg.get("model_name") or "unknown",
        hook=path.name,  # sparsify names folders by hookpoint, e.g. layers.6.mlp
        d_in=int(cfg.get("d_in") or 0),
        d_sae=int(cfg.get("num_latents") or 0),
        arch="topk" if arch == "topk" else arch,
        k=cfg.get("k"),
        source=str(path), fmt="sparsify",
    )
    return SAERecord(meta, weights)
