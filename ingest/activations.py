"""A model's activations at named hooks over a corpus: streamed batch by batch, or stored to disk in shards.

Documents are cut into windows of `window` tokens (not truncated at the model's max length: that
would keep only each document's start). Each window is framed as the model expects it (atlas_ingest.models:
[CLS] … [SEP] for BERT, BOS first for a causal LM, as sae_lens feeds it); those positions are dropped from
the activations. A shard is one safetensors file holding, for its tokens, one [T, d] float16 tensor per
hook, named by the hook (`blocks.3.hook_mlp_out`), and `token_ids`, `doc`, `pos` [T] int32.

Hook names in a store mean what TransformerLens means (docs/design.md, Activations by hook); the manifest
says so (`hook_names`). Stores written before that are all MiniLM's and named BERT's layer outputs
`blocks.L.hook_resid_post` (or `layer_{L}`, before hooks): read as blocks.L.hook_normalized_resid_post.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.store.parts import write_atomic

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MANIFEST = "manifest.json"
HOOK_NAMES = "transformer_lens"
"""The manifest's `hook_names`: the stored hooks mean what TransformerLens means."""


@dataclass
class ActivationConfig:
    model: str = DEFAULT_MODEL
    """A model name or path (atlas_ingest.models: bundled, .gguf, HF folder or Hub id, TransformerLens name)."""
    corpus: str = "prose"
    layers: list[int] = field(default_factory=lambda: list(range(6)))
    """Blocks whose output is captured: blocks.L.hook_resid_post, on a post-LN model (BERT)
    blocks.L.hook_normalized_resid_post (what the next block reads)."""
    hooks: list[str] = field(default_factory=list)
    """Other hooks captured too, by TransformerLens name (atlas_ingest.hooks; docs/design.md, Activations by hook)."""
    window: int = 126
    """Tokens per window (plus [CLS] and [SEP], or BOS)."""
    max_tokens: int = 300_000
    """Stop after this many tokens (0 = the whole corpus)."""
    batch_windows: int = 32
    shard_tokens: int = 65_536

    def all_hooks(self) -> list[str]:
        return list(dict.fromkeys([block_output(self.model, layer) for layer in self.layers] + list(self.hooks)))


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def block_output(model: str, layer: int) -> str:
    """The hook of block `layer`'s output, what the next block reads: hook_resid_post, or on a post-LN model
    (BERT: a LayerNorm after the add) hook_normalized_resid_post."""
    from .models import post_ln

    return f"blocks.{layer}.hook_normalized_resid_post" if post_ln(model) else resid_post(layer)


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


def pad_windows(first: list[int], last: list[int], pad: int, chunks: list[list[int]]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token windows as one right-padded batch: input_ids and attention_mask [n, L], each window between
    `first` and `last` (atlas_ingest.models.LoadedModel.frame), and `keep` [n, L], the windows' own tokens."""
    length = max(len(c) for c in chunks) + len(first) + len(last)
    ids = torch.full((len(chunks), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, c in enumerate(chunks):
        row = [*first, *c, *last]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        keep[i, len(first):len(first) + len(c)] = True
    return ids, mask, keep


def frame_windows(lm, chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pad_windows framed for a loaded model (atlas_ingest.models.LoadedModel)."""
    first, last = lm.frame()
    pad = lm.tokenizer.pad_token_id
    return pad_windows(first, last, pad if pad is not None else 0, chunks)


def model_batches(cfg: ActivationConfig, progress=None, info: dict | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Run the model over the corpus window batch by window batch: {hook: [t, d] float32, token_ids, doc,
    pos: [t]} for the batch's tokens ([CLS], [SEP], BOS and padding dropped). Nothing is kept between
    batches; the forward pass stops at the last hook asked for. `info` receives n_docs and d_model."""
    from . import models
    from .corpora import load
    from .hooks import HookedRunner

    lm = models.load(cfg.model)
    runner = HookedRunner(lm.model)
    hooks = cfg.all_hooks()
    runner.check(hooks)  # one line naming a hook the model lacks, before any work
    docs = load(cfg.corpus)
    if info is not None:
        info.update(n_docs=len(docs), d_model=lm.d_model, model_path=lm.spec.path)
    dev = lm.device

    def run(batch):
        ids, mask, keep = frame_windows(lm, [c for _, _, c in batch])  # keep drops [CLS], [SEP], BOS and padding
        acts = runner.run({"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}, capture=hooks)
        out = {h: acts[h][keep.to(dev)].float().cpu() for h in hooks}  # SAEs encode on the CPU (atlas.encode)
        out["token_ids"] = ids[keep].int()
        out["doc"] = torch.from_numpy(np.concatenate([np.full(len(c), d, np.int32) for d, _, c in batch]))
        out["pos"] = torch.from_numpy(np.concatenate([np.arange(s, s + len(c), dtype=np.int32) for _, s, c in batch]))
        if progress:
            progress(int(keep.sum()))
        return out

    batch: list[tuple[int, int, list[int]]] = []  # (HookedRunner.run is no_grad: no grad mode held across yields)
    for w in windows(lm.tokenizer, docs, cfg.window, cfg.max_tokens):
        batch.append(w)
        if len(batch) == cfg.batch_windows:
            yield run(batch)
            batch = []
    if batch:
        yield run(batch)


def collect(cfg: ActivationConfig, out: Path, progress=None) -> dict:
    """Run the model over the corpus and write shards + manifest.json under `out`. Returns the manifest."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    hooks = cfg.all_hooks()
    buf: dict[str, list[np.ndarray]] = {}
    shards, n_tokens, info = [], 0, {}

    def flush():
        nonlocal buf
        if not buf:
            return
        name = f"shard-{len(shards):05d}.safetensors"
        save_file({k: np.concatenate(v) for k, v in buf.items()}, str(out / name))
        shards.append(name)
        buf = {}

    for b in model_batches(cfg, progress, info):
        for k, v in b.items():
            buf.setdefault(k, []).append(v.half().numpy() if k in hooks else v.numpy())
        n_tokens += len(b["doc"])
        if sum(len(x) for x in buf["doc"]) >= cfg.shard_tokens:
            flush()
    flush()
    manifest = {"config": asdict(cfg), "model_path": info["model_path"], "d_model": info["d_model"], "hooks": hooks,
                "hook_names": HOOK_NAMES, "n_tokens": n_tokens, "shards": shards, "n_docs": info["n_docs"]}
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))  # marks the folder complete
    return manifest


_OLD_BERT = {"hook_resid_post": "hook_normalized_resid_post", "hook_mlp_out": "hook_mlp_out",
             "hook_attn_out": "hook_attn_out", "attn.hook_z": "attn.hook_z", "hook_resid_pre": "hook_resid_pre",
             "mlp.hook_pre": "mlp.hook_pre", "mlp.hook_post": "mlp.hook_post"}
"""Hooks of a store written before `hook_names` (MiniLM's, with its old BERT names) → their TransformerLens
names. Its resid_mid, hook_mlp_in and ln2.hook_normalized were LN1's output, which TransformerLens has no name
for: not offered."""


def stored_hooks(manifest: dict) -> dict[str, str]:
    """{hook (TransformerLens name): tensor name in the shards}."""
    if manifest.get("hook_names") == HOOK_NAMES:
        return {h: h for h in manifest["hooks"]}
    old = manifest.get("hooks") or [f"layer_{layer}" for layer in manifest["config"]["layers"]]
    out = {}
    for name in old:
        m = re.fullmatch(r"layer_(\d+)|blocks\.(\d+)\.(.+)", name)
        layer, hook = (m.group(1), "hook_resid_post") if m and m.group(1) else (m.group(2), m.group(3)) if m else (0, "")
        if hook in _OLD_BERT:
            out[f"blocks.{layer}.{_OLD_BERT[hook]}"] = name
    return out


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


def iter_hooks(folder: Path, hooks: list[str], batch: int = 4096,
               max_tokens: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Several hooks' activations in step, {hook: [≤ batch, d] float32} per batch in storage order,
    reading one shard's tensors at a time (never the whole corpus); stops after max_tokens."""
    from safetensors import safe_open

    manifest = read_manifest(folder)
    names = stored_hooks(manifest)
    for h in hooks:
        if h not in names:
            raise ValueError(f"{folder}: no activations stored at hook {h} (stored: {', '.join(names)})")
    left = max_tokens if max_tokens is not None else manifest["n_tokens"]
    carry: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    held = 0
    for s in manifest["shards"]:
        if left <= 0:
            break
        with safe_open(str(folder / s), "np") as f:
            for h in hooks:
                carry[h].append(f.get_tensor(names[h])[:left])
        n = len(carry[hooks[0]][-1]) if hooks else 0
        left -= n
        held += n
        while held >= batch:
            joined = {h: np.concatenate(carry[h]) for h in hooks}
            yield {h: torch.from_numpy(x[:batch].astype(np.float32)) for h, x in joined.items()}
            carry = {h: [x[batch:]] for h, x in joined.items()}
            held -= batch
    if held:
        yield {h: torch.from_numpy(np.concatenate(carry[h]).astype(np.float32)) for h in hooks}


def load_hook(folder: Path, hook: str) -> torch.Tensor:
    """All tokens' activations at one hook [T, d] as float32 (small corpora; jobs stream with iter_hooks)."""
    return torch.cat([b[hook] for b in iter_hooks(folder, [hook], batch=1 << 30)])


def load_tokens(folder: Path) -> dict[str, np.ndarray]:
    """token_ids, doc and pos of every stored token, in storage order."""
    from safetensors import safe_open

    out: dict[str, list[np.ndarray]] = {}
    for s in read_manifest(folder)["shards"]:
        with safe_open(str(folder / s), "np") as f:
            for k in ("token_ids", "doc", "pos"):
                out.setdefault(k, []).append(f.get_tensor(k))
    return {k: np.concatenate(v) for k, v in out.items()}
