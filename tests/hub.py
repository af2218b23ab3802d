"""Builders of what the libraries leave on disk: a Hugging Face Hub cache (the layout huggingface_hub
reads with HF_HUB_OFFLINE=1) and Gemma Scope params.npz files at tiny shapes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Tiny stand-ins for Gemma Scope's widths (16k, 65k, 1m, …), distinct so that distinct SAEs stay distinct.
TINY_WIDTH = {"4k": 4, "16k": 16, "32k": 32, "65k": 64, "131k": 128, "262k": 256, "524k": 512, "1m": 1024}


def snapshot(hf_home: Path, repo_id: str) -> Path:
    """$HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/, with refs/main naming the commit."""
    repo = Path(hf_home) / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def gemma_scope_params(d_in: int, d_sae: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.standard_normal((d_in, d_sae), np.float32), "W_dec": rng.standard_normal((d_sae, d_in), np.float32),
            "b_enc": rng.standard_normal(d_sae, np.float32) * 0.1, "b_dec": rng.standard_normal(d_in, np.float32) * 0.1,
            "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32)}


def write_gemma_scope(root: Path, folder: str, d_in: int = 8, seed: int = 0) -> Path:
    """root/<folder>/params.npz at a tiny width derived from the folder's width_<W> (as Gemma Scope names them)."""
    width = re.search(r"width_(\w+?)/", folder + "/").group(1)
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "params.npz", **gemma_scope_params(d_in, TINY_WIDTH[width], seed))
    return out / "params.npz"


def cache_release(hf_home: Path, release: str, d_in: int = 8) -> int:
    """Every file sae_lens's registry lists for a Gemma Scope release, in the cache; returns how many."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    info = get_pretrained_saes_directory()[release]
    snap = snapshot(hf_home, info.repo_id)
    for i, path in enumerate(sorted(set(info.saes_map.values()))):
        write_gemma_scope(snap, path, d_in, seed=i)
    return len(set(info.saes_map.values()))


def offline_hub(monkeypatch, hf_home: Path) -> None:
    """HF_HOME=hf_home and HF_HUB_OFFLINE=1 for this process: the environment for anything started from
    here, and huggingface_hub's constants (read once at its import) for this interpreter."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(Path(hf_home) / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
