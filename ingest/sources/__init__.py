"""SAE readers: sae_lens, Gemma Scope and sparsify layouts, each returning a validated SAERecord."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from atlas.sae import SAEError, SAERecord, validate

from .gemmascope import is_gemmascope, read_gemmascope
from .saelens import is_saelens_dir, read_release, read_saelens
from .sparsify import is_sparsify_dir, read_sparsify

FORMATS = ("saelens", "gemmascope", "sparsify")


def detect_format(path: Path) -> str:
    if not path.exists():
        raise SAEError(f"{path}: no such file or folder")
    if is_gemmascope(path):
        return "gemmascope"
    if path.is_dir() and is_sparsify_dir(path):
        return "sparsify"
    if path.is_dir() and is_saelens_dir(path):
        return "saelens"
    raise SAEError(f"{path}: not an SAE folder (expected cfg.json + sae_weights.safetensors, "
                   f"params.npz, or cfg.json + sae.safetensors)")


def read_sae(path: str | Path, fmt: str | None = None, **overrides) -> SAERecord:
    """Read and validate one SAE; `overrides` (model, hook, layer, seed, dataset, sae_id, …) win over the file."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    reader = {"saelens": read_saelens, "gemmascope": read_gemmascope, "sparsify": read_sparsify}.get(fmt)
    if reader is None:
        raise SAEError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    rec = reader(path)
    return finish(rec, str(path), overrides)


def load_stored(source: str, fmt: str, sha256: str, sae_id: str):
    """Weights of an SAE already in the atlas, re-read from its source and checked against its hash."""
    if fmt == "saelens" and ":" in source and not Path(source).exists():
        release, _, name = source.partition(":")
        rec = read_release(release, name)
    else:
        rec = {"saelens": read_saelens, "gemmascope": read_gemmascope, "sparsify": read_sparsify}[fmt](Path(source))
    w = rec.weights
    if w.sha256() != sha256:
        raise SAEError(f"{sae_id}: weights at {source} changed since ingest (sha256 differs); "
                       f"re-ingest with --replace")
    return w


def read_pretrained(release: str, sae_id: str, **overrides) -> SAERecord:
    return finish(read_release(release, sae_id), f"{release}:{sae_id}", overrides)


def finish(rec: SAERecord, where: str, overrides: dict) -> SAERecord:
    given = {k: v for k, v in overrides.items() if v is not None}
    if "hook" in given and "site" not in given:
        rec.meta.site = None  # re-derive site/layer from the new hook
        rec.meta.layer = given.get("layer")
    return validate(SAERecord(replace(rec.meta, **given), rec.weights), where)


__all__ = ["FORMATS", "SAEError", "detect_format", "load_stored", "read_pretrained", "read_sae"]
