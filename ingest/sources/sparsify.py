"""EleutherAI sparsify: a folder per hookpoint with cfg.json + sae.safetensors (SparseCoder.save_to_disk),
inside a trainer run folder whose config.json names the model, dataset, hookpoints and seeds.

Run layouts: run/<hook>/, run/<hook>/seed<K>/ (several init seeds), run/best/<hook>/ (save_best).
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from atlas.sae import SAEMeta, SAERecord, SAEWeights

from .files import Count, Int32, Text, check_config, load_json, load_safetensors, need

WEIGHTS_FILENAME = "sae.safetensors"


class Config(msgspec.Struct):
    """The fields of an SAE folder's cfg.json the atlas reads, typed (files.check_config)."""

    activation: Text | None = None
    k: Count | None = None
    d_in: Count | None = None
    num_latents: Count | None = None
    transcode: bool | None = None
    model: Text | None = None
    model_name: Text | None = None


class RunConfig(msgspec.Struct):
    """The fields of the trainer run's config.json the atlas reads."""

    model: Text | None = None
    dataset: Text | None = None
    init_seeds: list[Int32] | None = None


def detect(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILENAME).exists()


def run_root(path: Path) -> tuple[Path | None, dict]:
    """The trainer run folder above an SAE folder (its config.json has an `sae` section), and that config."""
    for parent in list(path.parents)[:3]:
        cfg_file = parent / "config.json"
        if cfg_file.is_file():
            cfg = load_json(cfg_file)
            if isinstance(cfg.get("sae"), dict):
                check_config(cfg, RunConfig, cfg_file)
                return parent, cfg
    return None, {}


def read(path: Path) -> SAERecord:
    cfg = load_json(path / "cfg.json", Config)
    wfile = path / WEIGHTS_FILENAME
    t = load_safetensors(wfile)
    root, run = run_root(path)
    hook, seed, variant = path.name, None, None
    if m := re.fullmatch(r"seed(\d+)", path.name):  # several init seeds: <hook>/seed<K>
        hook, seed, variant = path.parent.name, int(m.group(1)), path.name
    elif len(run.get("init_seeds") or []) == 1:
        seed = run["init_seeds"][0]
    if root is not None and root.name == "best":  # save_best writes run/best/ with its own config.json
        variant = "best" if variant is None else f"best-{variant}"
        root = root.parent
    transcode = bool(cfg.get("transcode"))
    extra = {"W_skip": need(t, "W_skip", wfile)} if "W_skip" in t else {}
    weights = SAEWeights(W_enc=need(t, "encoder.weight", wfile).T.copy(),  # [num_latents, d_in] on disk
                         W_dec=need(t, "W_dec", wfile), b_enc=need(t, "encoder.bias", wfile),
                         b_dec=need(t, "b_dec", wfile), extra=extra)
    kind = "skip_transcoder" if extra else "transcoder" if transcode else "sae"
    meta = SAEMeta(
        model=run.get("model") or cfg.get("model") or cfg.get("model_name") or "unknown",
        hook=hook,  # sparsify names folders by hookpoint, e.g. layers.6.mlp
        hook_out=hook if kind != "sae" else None,  # a transcoder predicts its module's output from its input
        d_in=int(cfg.get("d_in") or 0),
        d_sae=int(cfg.get("num_latents") or 0),
        arch=cfg.get("activation", "topk"),
        kind=kind,
        k=cfg.get("k"),
        seed=seed,
        dataset=run.get("dataset"),
        release=root.name if root is not None else None,
        variant=variant,
        source=str(path), fmt="sparsify",
        extra={"apply_b_dec_to_input": not transcode},
    )
    return SAERecord(meta, weights)
