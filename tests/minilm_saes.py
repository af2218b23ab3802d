"""Untrained SAEs on the real MiniLM, built in seconds: for commands that need the model and SAEs at its hooks.

Layer 0's decoder rows are centred hidden states of sampled prose tokens (so features fire on tokens like
those); each later layer keeps those directions with a little noise (so matching gives carry edges) and its
own centring. ReLU encoder = decoder transposed, with a bias that lets a feature fire on about 2% of tokens.
The science of check-edges is tested on the planted identity model (test_ablation.py); these exist so the
README's commands run as typed on the model they name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MODEL = "all-MiniLM-L6-v2"


def write_minilm_saes(out: Path, layers=(0, 1, 2), d_sae: int = 768, seed: int = 0, dataset: str = "prose") -> list[Path]:
    """sae_lens folders of untrained SAEs at MiniLM's layer outputs, blocks.L.hook_normalized_resid_post."""
    from safetensors.numpy import save_file

    from atlas_ingest.ablation import heldout_windows, load_model
    from atlas_ingest.hooks import HookedRunner

    w = heldout_windows(MODEL, dataset, 0, 24)
    hooks = [f"blocks.{layer}.hook_normalized_resid_post" for layer in layers]
    got = HookedRunner(load_model(MODEL)).run(w.inputs, capture=hooks)
    rng = np.random.default_rng(seed)
    xs = {h: got[h][w.keep].numpy().astype(np.float32) for h in hooks}
    pick = rng.choice(len(xs[hooks[0]]), d_sae, replace=False)
    base = xs[hooks[0]][pick] - xs[hooks[0]].mean(0)
    folders = []
    for layer, hook in zip(layers, hooks):
        x = xs[hook]
        mean = x.mean(0)
        dec = base + 0.1 * np.linalg.norm(base, axis=1, keepdims=True) * rng.standard_normal(base.shape) / np.sqrt(x.shape[1])
        dec = (dec / np.linalg.norm(dec, axis=1, keepdims=True)).astype(np.float32)
        pre = (x - mean) @ dec.T
        b_enc = -np.quantile(pre, 0.98, axis=0).astype(np.float32)
        folder = out / f"{dataset}-s{seed}-L{layer}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"W_enc": np.ascontiguousarray(dec.T), "W_dec": dec, "b_enc": b_enc, "b_dec": mean.astype(np.float32)},
                  str(folder / "sae_weights.safetensors"))
        (folder / "cfg.json").write_text(json.dumps({
            "d_in": x.shape[1], "d_sae": d_sae, "dtype": "float32", "architecture": "standard",
            "apply_b_dec_to_input": True, "normalize_activations": "none",
            "metadata": {"model_name": MODEL, "hook_name": hook, "dataset_path": dataset, "seed": seed}}))
        folders.append(folder)
    return folders
