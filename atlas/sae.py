"""The in-memory SAE record every reader returns: weights, metadata and their validation."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

import numpy as np

ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk", "gated")
SITES = ("resid", "mlp", "attn")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SAEError(ValueError):
    """Bad SAE input: the message names the file and the tensor or field at fault."""


@dataclass
class SAEWeights:
    W_enc: np.ndarray  # [d_in, d_sae]
    W_dec: np.ndarray  # [d_sae, d_in]; row i is feature i's direction
    b_enc: np.ndarray  # [d_sae]
    b_dec: np.ndarray  # [d_in]
    threshold: np.ndarray | None = None  # [d_sae], JumpReLU only

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out

    def sha256(self) -> str:
        """Hash of the tensors themselves, so the same weights hash alike in any file format."""
        h = hashlib.sha256()
        for name, t in sorted(self.tensors().items()):
            a = np.ascontiguousarray(t, dtype=np.float32)
            h.update(f"{name}{a.shape}".encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()


@dataclass
class SAEMeta:
    model: str
    hook: str
    d_in: int
    d_sae: int
    arch: str
    site: str | None = None
    layer: int | None = None
    k: int | None = None
    seed: int | None = None
    dataset: str | None = None
    source: str = ""
    fmt: str = ""
    sha256: str = ""
    neuronpedia_id: str | None = None
    sae_id: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def stack(self) -> str:
        """SAEs of one model, site, width, architecture, seed and dataset, ordered by layer."""
        return slug(f"{self.model}-{self.site}-w{self.d_sae}-{self.arch}-s{self.seed}-{self.dataset}")


@dataclass
class SAERecord:
    meta: SAEMeta
    weights: SAEWeights


def slug(text: str) -> str:
    return _ID_UNSAFE.sub("_", text).strip("_")


def default_sae_id(meta: SAEMeta) -> str:
    return slug(f"{meta.model}-{meta.site}{meta.layer}-w{meta.d_sae}-s{meta.seed}-{meta.dataset}")


def parse_hook(hook: str) -> tuple[str | None, int | None]:
    """(site, layer) from a TransformerLens or HF hook name: blocks.12.hook_resid_post, layers.6.mlp."""
    m = re.search(r"(?:blocks|layers|layer|h)[._](\d+)", hook)
    layer = int(m.group(1)) if m else None
    low = hook.lower()
    if "attn" in low or "hook_z" in low or "attention" in low:
        site = "attn"
    elif "mlp" in low:
        site = "mlp"
    elif "resid" in low or re.fullmatch(r"(?:blocks|layers|layer|h)[._]\d+", hook):
        site = "resid"
    else:
        site = None
    return site, layer


def normalise_arch(arch: str, where: str) -> str:
    a = arch.lower().replace("-", "").replace("_", "")
    table = {"standard": "standard", "relu": "standard", "jumprelu": "jumprelu", "topk": "topk",
             "batchtopk": "batchtopk", "gated": "gated"}
    if a not in table:
        raise SAEError(f"{where}: unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return table[a]


def validate(rec: SAERecord, where: str) -> SAERecord:
    """Check shapes and finiteness; fill d_in/d_sae/site/layer/sha256/sae_id. Raises SAEError."""
    w, m = rec.weights, rec.meta
    if w.W_dec.ndim != 2:
        raise SAEError(f"{where}: tensor W_dec must be 2-D [d_sae, d_in], got shape {w.W_dec.shape}")
    d_sae, d_in = w.W_dec.shape
    expect = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if w.threshold is not None:
        expect["threshold"] = (d_sae,)
    for name, shape in expect.items():
        got = tuple(getattr(w, name).shape)
        if got != shape:
            raise SAEError(f"{where}: tensor {name} has shape {got}, expected {shape} "
                           f"(W_dec is [d_sae={d_sae}, d_in={d_in}])")
    for name, t in w.tensors().items():
        if not np.isfinite(t).all():
            bad = int((~np.isfinite(t)).sum())
            raise SAEError(f"{where}: tensor {name} holds {bad} NaN/Inf values")
    if m.d_in and m.d_in != d_in or m.d_sae and m.d_sae != d_sae:
        raise SAEError(f"{where}: config says d_in={m.d_in}, d_sae={m.d_sae} but W_dec is {w.W_dec.shape}")
    m.arch = normalise_arch(m.arch, where)
    if m.arch == "jumprelu" and w.threshold is None:
        raise SAEError(f"{where}: architecture jumprelu needs tensor 'threshold' [d_sae], none found")
    if m.arch in ("topk", "batchtopk") and not m.k:
        raise SAEError(f"{where}: architecture {m.arch} needs k (top-k) in its config")
    site, layer = parse_hook(m.hook)
    m = replace(m, d_in=d_in, d_sae=d_sae, site=m.site or site, layer=m.layer if m.layer is not None else layer)
    if m.site is not None and m.site not in SITES:
        raise SAEError(f"{where}: site {m.site!r} is not one of {', '.join(SITES)}")
    if m.layer is None:
        raise SAEError(f"{where}: no layer in hook {m.hook!r}; pass --layer")
    m.sha256 = w.sha256()
    m.sae_id = slug(m.sae_id) if m.sae_id else default_sae_id(m)
    return SAERecord(m, w)


def as_f32(t, where: str, name: str) -> np.ndarray:
    a = np.asarray(t)
    if a.dtype.kind not in "fiu":
        raise SAEError(f"{where}: tensor {name} has non-numeric dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)

