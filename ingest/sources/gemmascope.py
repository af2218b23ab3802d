"""Gemma Scope download trees: gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att,transcoders}/layer_{L}/width_{W}/
average_l0_{N}/params.npz (v1), or config.json + params.safetensors (v2).

Where the path names its repo, the metadata comes from sae_lens's own Gemma Scope config getter (model,
hook, dataset, transcoder hooks) and its registry (canonical variant, Neuronpedia id), so a file read from
disk and the same SAE loaded with `--release` get identical metadata, hash and stack.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import numpy as np

from atlas.sae import SAEMeta, SAERecord, SAEWeights

from .files import Text, load_json, load_npz, load_safetensors, need

_REPO = re.compile(r"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)")
_FOLDER = re.compile(r"(layer_\d+|embedding)/width_(\w+?)/([^/]+)$")
_SITE_FROM_REPO = {"res": "resid", "mlp": "mlp", "att": "attn", "transcoders": "mlp"}


class Config(msgspec.Struct):
    """The fields of a v2 folder's config.json the atlas reads, typed (files.check_config)."""

    model_name: Text | None = None
    hook_name: Text | None = None


def detect(path: Path) -> bool:
    return path.suffix == ".npz" or (path / "params.npz").exists() or (path / "params.safetensors").exists()


def parse_path(path: Path) -> dict:
    """repo, folder (as in the repo), layer, width, variant, average L0, model and site from a Gemma Scope path."""
    text = path.as_posix()
    out: dict = {}
    if m := _FOLDER.search(text):
        out["folder"] = m.group(0)
        out["layer"] = -1 if m.group(1) == "embedding" else int(m.group(1)[len("layer_"):])
        out["width"] = m.group(2)
        out["variant"] = m.group(3)
        if l0 := re.fullmatch(r"average_l0_(\d+)", m.group(3)):
            out["average_l0"] = int(l0.group(1))
    if m := _REPO.search(text):
        out["repo"] = f"google/{m.group(0)}"
        out["model"] = f"gemma-2-{m.group(1)}" + ("-it" if m.group(2) == "it" else "")
        out["site"] = _SITE_FROM_REPO[m.group(3)]
        out["kind"] = "transcoder" if m.group(3) == "transcoders" else "sae"
    return out


def hook_for(site: str | None, layer: int | None) -> str:
    if layer is None:
        return ""
    if layer == -1:
        return "hook_embed"
    return {"mlp": f"blocks.{layer}.hook_mlp_out", "attn": f"blocks.{layer}.attn.hook_z"}.get(
        site or "resid", f"blocks.{layer}.hook_resid_post")


def sae_lens_config(repo: str, folder: str, kind: str) -> dict:
    """The config sae_lens derives for this repo + folder (a pure function of the names: no download)."""
    from sae_lens.loading.pretrained_sae_loaders import (
        get_gemma_2_config_from_hf,
        get_gemma_2_transcoder_config_from_hf,
    )

    getter = get_gemma_2_transcoder_config_from_hf if kind == "transcoder" else get_gemma_2_config_from_hf
    try:
        return getter(repo, folder, "cpu")
    except (ValueError, StopIteration):
        return {}


def registry_entry(repo: str, folder: str) -> tuple[str | None, str | None]:
    """(variant, neuronpedia id) of this file in sae_lens's registry: 'canonical' where a canonical
    release points at it, and the Neuronpedia id any release gives it."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    variant, npid = None, None
    for release in get_pretrained_saes_directory().values():
        if release.repo_id != repo:
            continue
        for sae_id, path in release.saes_map.items():
            if path.strip("/") == folder:
                if sae_id.endswith("/canonical"):
                    variant = "canonical"
                npid = npid or release.neuronpedia_id.get(sae_id)
    return variant, npid


def read(path: Path) -> SAERecord:
    folder = path.parent if path.suffix in (".npz", ".safetensors") else path
    if path.suffix == ".npz" or (folder / "params.npz").exists():
        wfile = path if path.suffix == ".npz" else folder / "params.npz"
        t = load_npz(wfile)
        cfg = {}
    else:
        wfile = folder / "params.safetensors"
        t = load_safetensors(wfile)
        cfg = load_json(folder / "config.json", Config) if (folder / "config.json").exists() else {}
    info = parse_path(folder)
    kind = info.get("kind", "sae")
    lens = sae_lens_config(info["repo"], info["folder"], kind) if "repo" in info and "folder" in info else {}
    variant, npid = registry_entry(info["repo"], info["folder"]) if lens else (None, None)
    W_enc, W_dec = need(t, "W_enc", wfile), need(t, "W_dec", wfile)
    if info.get("layer") == -1 and lens:  # sae_lens rescales embedding SAEs for the scale of d_model
        W_enc, W_dec = W_enc / np.sqrt(lens["d_in"]), W_dec * np.sqrt(lens["d_in"])
    weights = SAEWeights(W_enc=W_enc, W_dec=W_dec, b_enc=need(t, "b_enc", wfile), b_dec=need(t, "b_dec", wfile),
                         threshold=need(t, "threshold", wfile))
    layer = info.get("layer")
    meta = SAEMeta(
        model=cfg.get("model_name") or lens.get("model_name") or info.get("model") or "unknown",
        hook=cfg.get("hook_name") or lens.get("hook_name") or hook_for(info.get("site"), layer),
        hook_out=lens.get("hook_name_out"),
        d_in=0, d_sae=0, arch="jumprelu", site=info.get("site"), layer=layer, kind=kind,
        dataset=lens.get("dataset_path"), source=str(wfile), fmt="gemmascope",
        release=info.get("repo"), variant=variant or info.get("variant"), l0=info.get("average_l0"),
        neuronpedia_id=npid,
        extra={"width": info.get("width"), "apply_b_dec_to_input": False},
    )
    return SAERecord(meta, weights)
