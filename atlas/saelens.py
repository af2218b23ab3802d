"""Atlas SAEs handed to sae_lens: the SAE an atlas row names, loaded by sae_lens itself from its source (a sae_lens
folder or a pretrained release; the atlas keeps no encoder of its own), checked against the atlas's decoder
directions, whole or cut down to some of its features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import QueryError
from .index import unit_rows

SAME = 1 - 1e-4
"""Least cosine between each loaded decoder row and the atlas's: below it, the file is not the SAE the atlas matched."""


def to_sae_lens(snap, sae_id: str, features: list[int] | None = None, device: str = "cpu"):
    """A sae_lens `SAE` of the atlas's SAE `sae_id`; with `features`, one of just those features, in that order
    (their encoder columns, decoder rows, biases and thresholds; a top-k SAE keeps at most that many active)."""
    row = snap.sae(sae_id)
    sae = _load(row, device)
    _check(snap, row, sae)
    if features is None:
        return sae
    for f in features:
        snap.feature(sae_id, f)
    return _subset(sae, features)


def _load(row: dict, device: str):
    from sae_lens import SAE

    fmt, source = row["format"], row["source"]
    if fmt == "saelens" and ":" in source and not Path(source).exists():  # atlases before the release format
        fmt = "release"
    if fmt == "saelens":
        if not Path(source).is_dir():
            raise QueryError(f"{row['sae_id']}: its weights at {source} are missing; if they moved, run "
                             f"`atlas saes reroot OLD_FOLDER NEW_FOLDER`")
        return SAE.load_from_disk(source, device=device)
    if fmt == "release":
        release, _, name = source.partition(":")
        out = SAE.from_pretrained(release, name, device=device)
        return out[0] if isinstance(out, tuple) else out
    raise QueryError(f"{row['sae_id']} was read from a {fmt} layout, which sae_lens does not load; its decoder rows "
                     f"are Notebook.decoder(...), GET .../steering has them with hooks")


def _check(snap, row: dict, sae) -> None:
    """Every loaded decoder row points where the atlas's does (FAISS holds the unit rows it was matched on)."""
    loaded = sae.W_dec.detach().float().cpu().numpy()  # [d_sae, d_out]
    if loaded.shape[0] != row["d_sae"]:
        raise QueryError(f"{row['sae_id']}: the SAE at {row['source']} has {loaded.shape[0]} features, the atlas "
                         f"{row['d_sae']}: re-ingest it with --replace")
    stored = snap.faiss.get(row["index_file"]).reconstruct_n(0, row["d_sae"])
    live = np.abs(stored).sum(axis=1) > 0
    cos = (unit_rows(loaded) * stored).sum(axis=1)
    if loaded.shape[1] != stored.shape[1] or (cos[live] < SAME).any():
        raise QueryError(f"{row['sae_id']}: the weights at {row['source']} changed since ingest (its decoder differs "
                         f"from the atlas's); re-ingest with --replace")


def _subset(sae, features: list[int]):
    import torch

    cfg = sae.cfg.to_dict()
    cfg["d_sae"] = len(features)
    if cfg.get("k"):
        cfg["k"] = min(cfg["k"], len(features))
    small = type(sae).from_dict(cfg)
    idx = torch.tensor(features, dtype=torch.long)
    state = {}
    for name, t in sae.state_dict().items():
        if name == "W_enc":  # [d_in, d_sae]
            state[name] = t[:, idx]
        elif name != "b_dec" and t.ndim >= 1 and t.shape[0] == sae.cfg.d_sae:  # W_dec [d_sae, d_out], b_enc, threshold
            state[name] = t[idx]
        else:
            state[name] = t
    small.load_state_dict(state)
    return small.to(sae.device)
