"""Steering sets: the decoder directions of a feature's carry chain across its stack (docs/design.md, Steering sets).

SAE feature flow (Laptev et al. 2025) steers with a feature's flow across layers: adding the decoder directions
of the whole chain, each at its own hook, moves the model more reliably than one layer's direction. The chain
is the lineage's carry (and gap) edges through the feature, backward to its birth and forward to its last
layer; at a split it follows the assigned child. Directions are W_dec rows (unit row from the SAE's FAISS
index times the stored decoder norm), so `direction / norm` is the unit vector a steering tool scales.
"""

from __future__ import annotations

import json

import msgspec
import numpy as np

from ..errors import NotFound
from ..methods import Threshold
from .lineage import lineage

FORMAT = "feature-atlas-steering/1"
"""The `format` metadata of a steering file; bumped if its tensors change."""
CARRIED = ("carry", "gap")


class SteeringVector(msgspec.Struct):
    sae_id: str
    layer: int
    hook: str
    """Where the SAE reads (TransformerLens name): add the direction to this activation."""
    feature: int
    norm: float
    """‖W_dec[feature]‖: the direction's length."""
    direction: list[float]
    """W_dec[feature], [d_in]."""
    label: str | None = None
    max_act: float | None = None
    """The feature's largest seen activation (a natural steering scale), where known."""


class SteeringSet(msgspec.Struct):
    model: str
    root_sae: str
    root_feature: int
    method: str
    threshold: str
    vectors: list[SteeringVector]
    """The carry chain, by layer."""


def carry_chain(lin) -> list[tuple[str, int]]:
    """(sae_id, feature) of the root's carry chain in a Lineage, first layer first."""
    into = {(e.sae_b, e.feature_b): (e.sae_a, e.feature_a) for e in lin.edges if e.kind in CARRIED}
    out = {(e.sae_a, e.feature_a): (e.sae_b, e.feature_b) for e in lin.edges if e.kind in CARRIED}
    chain = [(lin.root.sae_id, lin.root.feature)]
    while chain[0] in into:
        chain.insert(0, into[chain[0]])
    while chain[-1] in out:
        chain.append(out[chain[-1]])
    return chain


def steering_set(snap, sae_id: str, feature: int, threshold: Threshold | None = None, max_skip: int = 1) -> SteeringSet:
    """The steering set of (sae_id, feature): its carry chain's decoder directions, hooks and layers (the unit
    decoder rows from the snapshot's FAISS indexes)."""
    lin = lineage(snap, sae_id, feature, threshold, max_skip=max_skip, include_sites=False)
    chain = carry_chain(lin)
    rows = {(s, f): (norm, label, max_act) for s, f, norm, label, max_act in snap.execute(
        "SELECT f.sae_id, f.feature, f.dec_norm, f.label, f.max_act FROM (SELECT unnest(?) AS sae_id, unnest(?) AS feature) n "
        "JOIN features f USING (sae_id, feature)", [[s for s, _ in chain], [f for _, f in chain]]).fetchall()}
    vectors = []
    for s, f in chain:
        sae = snap.sae(s)
        if (s, f) not in rows or not sae["index_file"]:
            raise NotFound(f"{s}/{f}: no decoder row stored (re-ingest the SAE)")
        norm, label, max_act = rows[(s, f)]
        unit = snap.faiss.get(sae["index_file"]).reconstruct(int(f))
        vectors.append(SteeringVector(sae_id=s, layer=sae["layer"], hook=sae.get("hook_out") or sae["hook"], feature=f,
                                      norm=float(norm), direction=(np.asarray(unit, np.float32) * norm).tolist(),
                                      label=label, max_act=max_act))
    return SteeringSet(model=snap.sae(sae_id)["model"], root_sae=sae_id, root_feature=feature, method=lin.method,
                       threshold=lin.threshold, vectors=vectors)


def to_safetensors(s: SteeringSet) -> bytes:
    """The set as a safetensors file (README, Steering sets): `directions` [n, d_in] float32 (W_dec rows, by
    layer), `norms` [n] float32, `layers` [n] int32, `features` [n] int64; metadata: format, model, root,
    and `hooks` / `sae_ids` as JSON lists in the rows' order."""
    from safetensors.numpy import save

    tensors = {"directions": np.array([v.direction for v in s.vectors], np.float32),
               "norms": np.array([v.norm for v in s.vectors], np.float32),
               "layers": np.array([v.layer for v in s.vectors], np.int32),
               "features": np.array([v.feature for v in s.vectors], np.int64)}
    meta = {"format": FORMAT, "model": s.model, "root": f"{s.root_sae}/{s.root_feature}", "method": s.method,
            "threshold": s.threshold, "hooks": json.dumps([v.hook for v in s.vectors]),
            "sae_ids": json.dumps([v.sae_id for v in s.vectors])}
    return save(tensors, metadata=meta)


def load_safetensors(data: bytes | str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a steering file (bytes or a path), as a steering tool reads it."""
    from safetensors import safe_open
    from safetensors.numpy import load

    if isinstance(data, (bytes, bytearray)):
        tensors = load(bytes(data))
        header_len = int.from_bytes(data[:8], "little")  # safetensors: 8-byte header size, JSON header
        meta = json.loads(data[8:8 + header_len]).get("__metadata__", {})
        return tensors, meta
    with safe_open(str(data), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
