"""The in-memory SAE record every reader returns: weights, metadata and their validation."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

SITES = ("resid", "mlp", "attn")
KINDS = ("sae", "transcoder", "skip_transcoder")


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class SAEError(ValueError):
    """Bad SAE input: the message names the file and the tensor or field at fault."""


@dataclass
class SAEWeights:
    W_enc: np.ndarray  # [d_in, d_sae]
    W_dec: np.ndarray  # [d_sae, d_out]; row i is feature i's direction (d_out = d_in except for transcoders)
    b_enc: np.ndarray  # [d_sae]; the gate's bias for gated SAEs (it decides which features fire)
    b_dec: np.ndarray  # [d_out]
    threshold: np.ndarray | None = None  # [d_sae], JumpReLU (and thresholded batch-top-k) only
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # b_mag, r_mag (gated); W_skip [d_out, d_in]

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_enc": self.b_enc, "b_dec": self.b_dec}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out | self.extra

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
    release: str | None = None  # sae_lens release, Hugging Face repo or training run the SAE comes from
    variant: str | None = None  # the source's own name among siblings: average_l0_71, canonical, trainer_3, seed1, best
    kind: str = "sae"  # sae | transcoder | skip_transcoder
    hook_out: str | None = None  # transcoders: where the decoder writes (site and layer come from it)
    d_out: int | None = None  # transcoders: width of the output space, the decoder rows' space
    l0: float | None = None  # average L0 where the source states it
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str | None:
        """The variant family that spans layers: Gemma Scope's average_l0_N differs per layer, so those
        SAEs stack only through a canonical release; seeds, trainers and `best` keep their name."""
        if self.variant is None or self.variant.startswith("average_l0_"):
            return None
        return self.variant

    @property
    def stack(self) -> str:
        """SAEs of one model, site, kind, width, architecture, seed, dataset and variant family, by layer."""
        kind = "" if self.kind == "sae" else f"-{self.kind}"
        family = f"-{self.family}" if self.family else ""
        return slug(f"{self.model}-{self.site}{kind}-w{self.d_sae}-{self.arch}-s{self.seed}-{self.dataset}{family}")


@dataclass
class SAERecord:
    meta: SAEMeta
    weights: SAEWeights


# Architectures. Encoders map the pre-activation (x − b_dec) @ W_enc + b_enc, a torch tensor [T, d_sae], to
# activations with tensor methods only, so this module needs no torch; atlas.encode runs them.
def _topk(w: SAEWeights, pre, k: int | None):
    acts = pre.relu()
    vals, idx = acts.topk(k, dim=1)
    return acts.new_zeros(acts.shape).scatter_(1, idx, vals)


def _batchtopk(w: SAEWeights, pre, k: int | None):
    """At inference batch-top-k SAEs use the threshold learnt in training where they have one
    (dictionary_learning), else the per-token top-k."""
    if w.threshold is not None:
        acts = pre.relu()
        return acts * (acts > pre.new_tensor(w.threshold))
    return _topk(w, pre, k)


def _gated(w: SAEWeights, pre, k: int | None):
    """Gated SAE (Rajamanoharan et al. 2024): the gate (W_enc, b_enc = b_gate) decides which features
    fire, the magnitude path (W_enc · exp(r_mag), b_mag) how strongly."""
    mag = (pre - pre.new_tensor(w.b_enc)) * pre.new_tensor(w.extra["r_mag"]).exp() + pre.new_tensor(w.extra["b_mag"])
    return (pre > 0) * mag.relu()


def _groupmax(w: SAEWeights, pre, k: int | None):
    """sparsify's groupmax: latents split into k equal groups, the largest of each group is kept."""
    groups = pre.relu().unflatten(-1, (k, -1))
    vals, idx = groups.max(dim=-1, keepdim=True)
    return groups.new_zeros(groups.shape).scatter_(-1, idx, vals).flatten(-2)


def _jumprelu_check(w: SAEWeights, meta: SAEMeta) -> str | None:
    if w.threshold is not None and (w.threshold < 0).any():
        return f"tensor threshold has {int((w.threshold < 0).sum())} negative values (JumpReLU thresholds are >= 0)"
    return None


def _groupmax_check(w: SAEWeights, meta: SAEMeta) -> str | None:
    d_sae = len(w.W_dec)
    return f"groupmax needs d_sae ({d_sae}) divisible by k ({meta.k})" if d_sae % meta.k else None


@dataclass(frozen=True)
class Architecture:
    """What an architecture adds to W_enc, W_dec, b_enc, b_dec, and its encoder (SAELens keeps one class each)."""

    name: str
    encoder: Callable
    """(weights, pre-activation [T, d_sae] torch tensor, k) → activations; atlas.encode runs it."""
    tensors: tuple[str, ...] = ()  # required extra tensors, [d_sae] each
    needs_k: bool = False
    aliases: tuple[str, ...] = ()
    check: Callable[[SAEWeights, SAEMeta], str | None] | None = None
    """What no trained SAE of this architecture has: a message, or None where the weights are fine."""


# One registry: readers, validation and atlas.encode all look architectures up here.
ARCHS = {a.name: a for a in (
    Architecture("standard", lambda w, pre, k: pre.relu(), aliases=("relu", "autoencoder", "p_anneal")),
    Architecture("jumprelu", lambda w, pre, k: pre * (pre > pre.new_tensor(w.threshold)), tensors=("threshold",),
                 aliases=("jumpreluautoencoder",), check=_jumprelu_check),
    Architecture("topk", _topk, needs_k=True, aliases=("autoencodertopk",)),
    Architecture("batchtopk", _batchtopk, needs_k=True, aliases=("batchtopksae", "matryoshkabatchtopksae")),
    Architecture("gated", _gated, tensors=("b_mag", "r_mag"), aliases=("gatedautoencoder",)),
    Architecture("groupmax", _groupmax, needs_k=True, check=_groupmax_check),
)}
_ALIASES = {alias: a.name for a in ARCHS.values() for alias in (a.name, *a.aliases)}


def slug(text: str) -> str:
    return _ID_UNSAFE.sub("_", text).strip("_")


def default_sae_id(meta: SAEMeta) -> str:
    """Readable and unique for distinct weights: model, site+layer, kind, width, variant, seed, dataset."""
    dataset = meta.dataset.rstrip("/").rsplit("/", 1)[-1] if meta.dataset else None
    parts = [meta.model, f"{meta.site}{meta.layer}", None if meta.kind == "sae" else meta.kind, f"w{meta.d_sae}",
             meta.variant, None if meta.seed is None else f"s{meta.seed}", dataset]
    return slug("-".join(p for p in parts if p))


def parse_hook(hook: str) -> tuple[str | None, int | None]:
    """(site, layer) from a TransformerLens or HF hook name: blocks.12.hook_resid_post, layers.6.mlp.
    The embedding (hook_embed, embed_tokens) is the residual stream before layer 0: layer -1."""
    m = re.search(r"(?:blocks|layers|layer|h)[._](\d+)", hook)
    layer = int(m.group(1)) if m else None
    low = hook.lower()
    if layer is None and re.search(r"(?:^|[._])(?:hook_embed|embed_tokens|embed|wte)$", low):
        return "resid", -1
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
    a = str(arch).lower().replace("-", "").replace("_", "")
    if a not in _ALIASES:
        raise SAEError(f"{where}: unknown architecture {arch!r}; known: {', '.join(ARCHS)}")
    return _ALIASES[a]


# More dead (all-zero) decoder rows than this fraction is a broken or untrained file, not an SAE.
MAX_DEAD_ROWS = 0.5

# Bounds of the metadata (docs/design.md, Ingest refusals): the saes table stores integers as INTEGER, and an
# index file is named <sae_id>-<sha12>.faiss, which must fit a file name's 255 bytes.
INT32 = (-2**31, 2**31 - 1)
MAX_TEXT = 1024  # characters of a name, hook or dataset path
MAX_ID = 200  # characters of an SAE id
_TEXT_FIELDS = ("model", "hook", "hook_out", "arch", "kind", "site", "dataset", "release", "variant", "neuronpedia_id",
                "sae_id")
_INT_FIELDS = {"layer": -1, "seed": INT32[0], "k": 0, "d_in": 0, "d_sae": 0, "d_out": 0}  # field: least value


def check_meta(m: SAEMeta, where: str) -> None:
    """Types and ranges of the metadata, whichever route it came by (a config, a release, an override)."""
    for name in _TEXT_FIELDS:
        v = getattr(m, name)
        if v is not None and not isinstance(v, str):
            raise SAEError(f"{where}: {name} must be text, found {type(v).__name__} {str(v)[:40]!r}")
        if v is not None and len(v) > MAX_TEXT:
            raise SAEError(f"{where}: {name} is {len(v):,} characters long (at most {MAX_TEXT})")
    for name, least in _INT_FIELDS.items():
        v = getattr(m, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise SAEError(f"{where}: {name} must be an integer, found {type(v).__name__} {str(v)[:40]!r}")
        if not least <= v <= INT32[1]:
            raise SAEError(f"{where}: {name} {str(v)[:40]} is out of range ({least} to {INT32[1]})")
    if m.l0 is not None and (isinstance(m.l0, bool) or not isinstance(m.l0, int | float | np.number)
                             or not np.isfinite(m.l0)):
        raise SAEError(f"{where}: l0 must be a finite number, found {str(m.l0)[:40]!r}")


def validate(rec: SAERecord, where: str) -> SAERecord:
    """Check shapes, finiteness and sanity; fill d_in/d_sae/site/layer/sha256/sae_id. Raises SAEError."""
    w, m = rec.weights, rec.meta
    check_meta(m, where)
    for name, t in w.tensors().items():  # the loaders refuse these by file; this holds for every route
        if not isinstance(t, np.ndarray) or t.dtype.kind != "f":
            raise SAEError(f"{where}: tensor {name} has dtype {getattr(t, 'dtype', type(t).__name__)}; SAE weights "
                           f"are floating point")
    if w.W_dec.ndim != 2 or w.W_enc.ndim != 2:
        raise SAEError(f"{where}: tensors W_enc and W_dec must be 2-D, got shapes {w.W_enc.shape} and {w.W_dec.shape}")
    d_sae, d_out = w.W_dec.shape
    d_in = w.W_enc.shape[0]
    m.arch = normalise_arch(m.arch, where)
    arch = ARCHS[m.arch]
    if m.kind not in KINDS:
        raise SAEError(f"{where}: kind {m.kind!r} is not one of {', '.join(KINDS)}")
    if m.kind == "sae" and d_in != d_out:
        raise SAEError(f"{where}: tensor W_enc has shape {w.W_enc.shape}, expected ({d_out}, {d_sae}) "
                       f"(W_dec is [d_sae={d_sae}, d_in={d_out}])")
    expect = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "b_dec": (d_out,)}
    if w.threshold is not None:
        expect["threshold"] = (d_sae,)
    expect |= {name: (d_sae,) for name in arch.tensors if name != "threshold"}
    if "W_skip" in w.extra:
        expect["W_skip"] = (d_out, d_in)
    tensors = w.tensors()
    for name, shape in expect.items():
        if name not in tensors:
            raise SAEError(f"{where}: architecture {m.arch} needs tensor {name!r} {list(shape)}, none found")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAEError(f"{where}: tensor {name} has shape {got}, expected {shape} "
                           f"(W_dec is [d_sae={d_sae}, d_out={d_out}])")
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            bad = int((~np.isfinite(t)).sum())
            raise SAEError(f"{where}: tensor {name} holds {bad} NaN/Inf values")
    if m.d_in and m.d_in != d_in or m.d_sae and m.d_sae != d_sae:
        raise SAEError(f"{where}: config says d_in={m.d_in}, d_sae={m.d_sae} but W_enc is {w.W_enc.shape}")
    if "threshold" in arch.tensors and w.threshold is None:
        raise SAEError(f"{where}: architecture {m.arch} needs tensor 'threshold' [d_sae], none found")
    dead = int((~w.W_dec.any(axis=1)).sum())  # no trained SAE has a dead decoder
    if dead == d_sae:
        raise SAEError(f"{where}: tensor W_dec is all zeros (an untrained or broken file)")
    if dead > MAX_DEAD_ROWS * d_sae:
        raise SAEError(f"{where}: tensor W_dec has {dead} of {d_sae} decoder rows all zero "
                       f"(more than {MAX_DEAD_ROWS:.0%}: an untrained or broken file)")
    if arch.needs_k and not m.k:
        raise SAEError(f"{where}: architecture {m.arch} needs k (top-k) in its config")
    if arch.check and (problem := arch.check(w, m)) is not None:
        raise SAEError(f"{where}: {problem}")
    site, layer = parse_hook(m.hook_out or m.hook)
    m = replace(m, d_in=d_in, d_sae=d_sae, d_out=d_out if m.kind != "sae" else None,
                site=m.site or site, layer=m.layer if m.layer is not None else layer)
    if m.site is not None and m.site not in SITES:
        raise SAEError(f"{where}: site {m.site!r} is not one of {', '.join(SITES)}")
    if m.layer is None:
        raise SAEError(f"{where}: no layer in hook {m.hook!r}; pass --layer")
    m.sha256 = w.sha256()
    m.sae_id = slug(m.sae_id) if m.sae_id else default_sae_id(m)
    if not m.sae_id:
        raise SAEError(f"{where}: SAE id has no letter or digit; pass --id")
    if len(m.sae_id) > MAX_ID:
        raise SAEError(f"{where}: SAE id {m.sae_id[:40]}… is {len(m.sae_id):,} characters long (at most {MAX_ID}); "
                       f"pass a shorter --id")
    return SAERecord(m, w)
