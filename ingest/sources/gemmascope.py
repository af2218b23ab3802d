"""Gemma Scope: layer_{L}/width_{W}/average_l0_{N}/params.npz (v1) or config.json + params.safetensors (v2)."""

from __future__ import annotations

import re
from pathlib import Path

from atlas.sae import SAEMeta, SAERecord, SAEWeights

from .files import load_json, load_npz, load_safetensors, need

_PATH = re.compile(r"layer_(\d+)/width_(\w+?)/(?:average_l0_(\d+)|[^/]+)")
_SITE_FROM_REPO = {"res": "resid", "mlp": "mlp", "att": "attn"}


def is_gemmascope(path: Path) -> bool:
    return path.suffix == ".npz" or (path / "params.npz").exists() or (path / "params.safetensors").exists()


def parse_path(path: Path) -> dict:
    """layer, width label, average L0, model and site from a standard Gemma Scope path, where present."""
    text = path.as_posix()
    out: dict = {}
    if m := _PATH.search(text):
        out["layer"] = int(m.group(1))
        out["width"] = m.group(2)
        if m.group(3):
            out["average_l0"] = int(m.group(3))
    if m := re.search(r"gemma-scope-(\d+b)-pt-(res|mlp|att)", text):
        out["model"] = f"gemma-2-{m.group(1)}"
        out["site"] = _SITE_FROM_REPO[m.group(2)]
    return out


def hook_for(site: str | None, layer: int | None) -> str:
    if layer is None:
        return ""
    return {"mlp": f"blocks.{layer}.hook_mlp_out", "attn": f"blocks.{layer}.attn.hook_z"}.get(
        site or "resid", f"blocks.{layer}.hook_resid_post")


def read_gemmascope(path: Path) -> SAERecord:
    folder = path.parent if path.suffix in (".npz", ".safetensors") else path
    if path.suffix == ".npz" or (folder / "params.npz").exists():
        wfile = path if path.suffix == ".npz" else folder / "params.npz"
        t = load_npz(wfile)
        cfg = {}
    else:
        wfile = folder / "params.safetensors"
        t = load_safetensors(wfile)
        cfg = load_json(folder / "config.json") if (folder / "config.json").exists() else {}
    info = parse_path(folder)
    site = info.get("site")
    layer = info.get("layer")
    weights = SAEWeights(W_enc=need(t, "W_enc", wfile), W_dec=need(t, "W_dec", wfile),
                         b_enc=need(t, "b_enc", wfile), b_dec=need(t, "b_dec", wfile),
                         threshold=need(t, "threshold", wfile))
    meta = SAEMeta(
        model=cfg.get("model_name") or info.get("model") or "unknown",
        hook=cfg.get("hook_name") or hook_for(site, layer),
        d_in=0, d_sae=0, arch="jumprelu", site=site, layer=layer,
        source=str(wfile), fmt="gemmascope",
        extra={**{k: v for k, v in info.items() if k in ("width", "average_l0")}, "apply_b_dec_to_input": False},
    )
    return SAERecord(meta, weights)
