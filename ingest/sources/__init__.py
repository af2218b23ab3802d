"""SAE readers, one registry entry per layout: how to recognise it and how to read it into a SAERecord.

read_sae validates what a reader returns (shapes, finiteness, sanity) and applies the caller's
overrides; every error is an SAEError naming the file and the tensor or field at fault.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from atlas.index import row_norms
from atlas.sae import SAEError, SAERecord, check_meta, normalise_arch, parse_hook, validate
from atlas_ingest.hooks import HookError, sae_hooks

from . import dictionary_learning, gemmascope, release, saelens, sparsify


@dataclass(frozen=True)
class Reader:
    name: str
    detect: Callable[[Path], bool] | None  # None: not a file layout (named sources)
    read: Callable  # Path (or, for releases, "RELEASE:SAE_ID") -> SAERecord
    markers: tuple[str, ...]  # files that mark a folder of this layout, for `ingest -r`
    describe: str


# Detection order matters where layouts share files: Gemma Scope's params.* first, then sparsify's
# sae.safetensors, dictionary_learning's ae.pt, and sae_lens's cfg.json last.
READERS = {r.name: r for r in (
    Reader("gemmascope", gemmascope.detect, gemmascope.read, ("params.npz", "params.safetensors"),
           "params.npz, or config.json + params.safetensors"),
    Reader("sparsify", sparsify.detect, sparsify.read, ("sae.safetensors",), "cfg.json + sae.safetensors"),
    Reader("dictionary_learning", dictionary_learning.detect, dictionary_learning.read, ("ae.pt",), "ae.pt + config.json"),
    Reader("saelens", saelens.detect, saelens.read, ("sae_weights.safetensors",), "cfg.json + sae_weights.safetensors"),
    Reader("release", None, release.read, (), "sae_lens RELEASE:SAE_ID"),
)}
FORMATS = tuple(READERS)
MARKERS = tuple(m for r in READERS.values() for m in r.markers)


def detect_format(path: Path) -> str:
    if not path.exists():
        raise SAEError(f"{path}: no such file or folder")
    for r in READERS.values():
        if r.detect is not None and r.detect(path):
            return r.name
    expected = ", ".join(r.describe for r in READERS.values() if r.detect is not None)
    raise SAEError(f"{path}: not an SAE folder (expected {expected})")


def read_sae(path: str | Path, fmt: str | None = None, **overrides) -> SAERecord:
    """Read and validate one SAE; `overrides` (model, hook, layer, seed, dataset, sae_id, …) win over the file."""
    if fmt == "release":
        return finish(release.read(str(path)), str(path), overrides)
    path = Path(path)
    fmt = fmt or detect_format(path)
    reader = READERS.get(fmt)
    if reader is None:
        raise SAEError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    rec = reader.read(path)
    # Stored resolved, so the atlas finds its weights from any working directory.
    rec.meta.source = str(Path(rec.meta.source).resolve())
    return finish(rec, str(path), overrides)


def load_stored(sae_id: str, source: str, fmt: str, sha256: str, **overrides) -> SAERecord:
    """An SAE already in the atlas, re-read from its source by its reader and checked against its hash: the one way
    jobs and commands load stored weights. `overrides` (layer, hook, ...) replace the file's metadata, as the atlas
    stores it (None: the file's value; a hook re-derives the site); the weights are those ingest validated (same
    hash), so they are not validated again and the file's own hook names are not read."""
    if fmt == "saelens" and ":" in source and not Path(source).exists():  # atlases before the release format
        fmt = "release"
    if fmt != "release" and not Path(source).exists():
        raise SAEError(f"{sae_id}: its weights at {source} are missing; if they moved, run "
                       f"`atlas saes reroot OLD_FOLDER NEW_FOLDER`")
    rec = READERS[fmt].read(source if fmt == "release" else Path(source))
    if rec.weights.sha256() != sha256:
        raise SAEError(f"{sae_id}: weights at {source} changed since ingest (sha256 differs); "
                       f"re-ingest with --replace")
    given = {k: v for k, v in overrides.items() if v is not None}
    meta = replace(rec.meta, sae_id=sae_id, sha256=sha256, **given)
    d_sae, d_out = rec.weights.W_dec.shape
    meta.d_in, meta.d_sae, meta.d_out = rec.weights.W_enc.shape[0], d_sae, d_out if meta.kind != "sae" else None
    meta.arch = normalise_arch(meta.arch, sae_id)
    site, layer = parse_hook(meta.hook_out or meta.hook)  # as validate fills them at ingest
    if "hook" in given and "site" not in given:  # the stored hook decides the site
        meta.site = site
    meta.site = meta.site or site
    meta.layer = meta.layer if meta.layer is not None else layer
    return SAERecord(meta, rec.weights)


def release_names(sources) -> list[str]:
    """RELEASE:SAE_ID names, a bare RELEASE expanded to every SAE sae_lens's registry lists for it."""
    names = []
    for s in sources:
        if release.SEP in s:
            release.lookup(s.partition(release.SEP)[0])
            names.append(s)
        else:
            names += [f"{s}{release.SEP}{i}" for i in release.release_ids(s)]
    return names


def finish(rec: SAERecord, where: str, overrides: dict) -> SAERecord:
    given = {k: v for k, v in overrides.items() if v is not None}
    if "hook" in given and "site" not in given:
        rec.meta.site = None  # re-derive site/layer from the new hook
        rec.meta.layer = given.get("layer")
    meta = replace(rec.meta, **given)
    check_meta(meta, where)  # bounded text before the hook rules read it
    try:  # hooks as TransformerLens names, whatever the file called them (atlas_ingest.hooks.sae_hooks)
        meta.hook, meta.hook_out = sae_hooks(meta.hook, meta.hook_out, meta.kind, meta.model)
    except HookError as e:
        raise SAEError(f"{where}: {e}") from None
    return check_magnitudes(validate(SAERecord(meta, rec.weights), where), where)


OVERFLOW = 1e4
"""A decoder entry larger than this many times the median decoder row norm is refused (docs/design.md, Ingest
refusals): trained SAEs stay within a few times the median; a finite 3e38 gives dec_norm = inf downstream."""

SCALE = (1e-15, 1e15)
"""Decoder row norms, raw and threshold-folded, must stay within this range (the largest row at most SCALE[1],
the median live row at least SCALE[0]): then decoder_mse's squared distances, stored as float32, neither
overflow nor vanish (docs/design.md, Ingest refusals). Trained SAEs have rows of norm 0.01 to 100."""


def check_magnitudes(rec: SAERecord, where: str) -> SAERecord:
    """Refuse decoder rows whose norm is not a finite float32, entries past OVERFLOW × the median row norm,
    and decoders whose scale (raw or threshold-folded) leaves SCALE."""
    w = rec.weights.W_dec
    norms = row_norms(w)
    with np.errstate(over="ignore"):
        big = ~np.isfinite(norms.astype(np.float32))
    if big.any():
        raise SAEError(f"{where}: tensor W_dec row {int(np.argmax(big))} has a norm past float32's range "
                       f"({int(big.sum())} such rows): a broken or mis-scaled file")
    median = float(np.median(norms[norms > 0])) if (norms > 0).any() else 0.0
    worst = float(np.maximum(w.max(), -w.min()))
    if median and worst > OVERFLOW * median:
        row = int(np.argmax(np.maximum(w.max(axis=1), -w.min(axis=1))))
        raise SAEError(f"{where}: tensor W_dec row {row} holds {worst:.3g}, more than {OVERFLOW:g} × the median "
                       f"decoder row norm ({median:.3g}): a broken or mis-scaled file")
    theta = rec.weights.threshold
    rows = {"W_dec": norms} | ({} if theta is None else {"threshold × W_dec": norms * np.abs(theta.astype(np.float64))})
    for name, n in rows.items():
        live = n[n > 0]
        if not len(live):
            continue
        if live.max() > SCALE[1]:
            raise SAEError(f"{where}: {name} row {int(np.argmax(n))} has norm {live.max():.3g}, above {SCALE[1]:g}: "
                           f"decoder_mse's squared distances would overflow float32 (a broken or mis-scaled file)")
        if np.median(live) < SCALE[0]:
            raise SAEError(f"{where}: {name} has median row norm {np.median(live):.3g}, below {SCALE[0]:g}: "
                           f"its squares vanish in float32 (a broken or mis-scaled file)")
    return rec


def find_sae_folders(root: Path) -> list[Path]:
    """SAE folders under root (any supported layout), sorted; a folder name that is not valid UTF-8 is refused."""
    if not root.exists():
        raise SAEError(f"{root}: no such file or folder")
    found = set()
    for marker in MARKERS:
        for p in root.rglob(marker):
            try:
                str(p).encode("utf-8")
            except UnicodeEncodeError:
                raise SAEError(f"{ascii(str(p.parent))[1:-1]}: folder name is not valid UTF-8; rename it") from None
            found.add(p.parent)
    # sparsify's best/ copies come after the run's own folders, so shared weights keep their run's name
    return sorted(found, key=lambda p: ("best" in p.relative_to(root).parts, p))

