"""Planted-truth SAE family: stacks whose true matches, deaths, births, splits, merges and orphans are known.

Layer l+1 of a stack is layer l's features, permuted, each drifted a little; a fraction die, some split
(one parent, two children), some pairs merge, and births fill the freed slots with new directions.
Sibling stacks (other seeds) share `seed_shared` of each layer's features and hold orphans elsewhere;
a second dataset shares fewer. A width family (`widths`) adds one layer of the base stack at larger
dictionary sizes: each narrow feature is kept, split into a known group of wide ones (it is their sum),
duplicated (near-copies) or absorbed, and the wide SAE holds novel features besides. Output: sae_lens folders plus
ground_truth.parquet. Deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .sae import SAEMeta, default_sae_id

MODEL = "synth"
GROUND_TRUTH = "ground_truth.parquet"


@dataclass
class SynthConfig:
    d_in: int = 512
    """Model width (2304 for the Gemma Scope 2b shape). At 512 unrelated directions stay below cosine
    0.3, the assignment floor, as at real widths."""
    d_sae: int = 512
    """Features per SAE."""
    n_layers: int = 6
    """Layers per stack."""
    n_seeds: int = 2
    """Seed siblings of the base stack (dataset A); 1 means no siblings."""
    second_dataset: bool = True
    """Also write a stack trained on dataset B (seed 0), which shares fewer features."""
    drift: float = 0.15
    """Per-layer noise; a carried feature keeps cosine about 1/sqrt(1+drift^2) with its parent."""
    death_frac: float = 0.04
    split_frac: float = 0.02
    merge_frac: float = 0.01
    split_noise: float = 0.5
    """Children of a split have cosine about 1/sqrt(1+split_noise^2) with their parent."""
    seed_shared: float = 0.7
    """Fraction of a layer's features a seed sibling shares (the rest of its slots are orphans)."""
    dataset_shared: float = 0.4
    seed_noise: float = 0.2
    enc_disagree_frac: float = 0.05
    """Of the shared features, fraction whose encoder differs in the sibling (decoder agrees only)."""
    flow: bool = False
    """Also write MLP-out and attention-out SAEs at layers 1.. of the base stack, holding known residual
    features, so feature-flow origin classes (RES, RES&MLP, MLP, ATT, from nowhere) have a truth."""
    widths: tuple[int, ...] = ()
    """Larger dictionary sizes of layer `width_layer` of the base stack, each built from the one before."""
    width_layer: int = 1
    width_split_frac: float = 0.1
    """Of a narrow SAE's features, fraction split into 2 or 3 wide features (the narrow one is their sum)."""
    width_absorbed_frac: float = 0.03
    """Fraction absorbed: the wider SAE holds them only as a small part of another feature (cosine ~0.3)."""
    width_duplicate_frac: float = 0.03
    """Fraction duplicated: the wider SAE holds 2 or 3 near-copies of them (each drifted by width_drift,
    cosine ~0.96 with one another) rather than a split."""
    width_spread: float = 1.0
    """Split children are unit(parent + spread * r) with the r's summing to zero: cosine 1/sqrt(1+spread^2)."""
    width_drift: float = 0.2
    """Noise of a kept feature between widths."""
    seed: int = 0


def unit(x: np.ndarray) -> np.ndarray:
    """x scaled to unit length along its last axis (rows of a matrix, or one vector), as float32."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def noisy(rng, x: np.ndarray, eps: float) -> np.ndarray:
    d = x.shape[-1]
    return unit(x + eps * rng.standard_normal(x.shape, dtype=np.float32) / np.sqrt(d))


def evolve(cfg: SynthConfig, rng) -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """Base stack: per-layer unit decoders [d_sae, d_in], concept ids per slot, and the truth edges."""
    n, d = cfg.d_sae, cfg.d_in
    dirs = unit(rng.standard_normal((n, d), dtype=np.float32))
    concepts = np.arange(n)
    next_concept = n
    decs, ids, truth = [dirs], [concepts], []
    # Children of a split or merge stay near their co-children; an event on one of them later would
    # make the truth ambiguous (a "dead" twin still matches), so events only touch plain features.
    plain = np.ones(n, dtype=bool)
    for layer in range(cfg.n_layers - 1):
        order = rng.permutation(n)
        order = np.concatenate([order[plain[order]], order[~plain[order]]])
        n_death, n_split, n_merge = (round(f * n) for f in (cfg.death_frac, cfg.split_frac, cfg.merge_frac))
        dead = order[:n_death]
        split = order[n_death:n_death + n_split]
        merge = order[n_death + n_split:n_death + n_split + 2 * n_merge].reshape(-1, 2)
        carry = order[n_death + n_split + 2 * n_merge:]
        # (direction, parents, kind) of each feature of layer l+1
        children = [(v, [int(i)], "carry") for v, i in zip(noisy(rng, dirs[carry], cfg.drift), carry)]
        for i in split:
            for c in noisy(rng, np.repeat(dirs[i][None], 2, 0), cfg.split_noise):
                children.append((c, [int(i)], "split"))
        for i, j in merge:
            children.append((unit(dirs[i] + dirs[j]), [int(i), int(j)], "merge"))
        n_birth = n - len(children)
        if n_birth < 0:
            raise ValueError("split_frac too large for death_frac + merge_frac: no room for children")
        births = unit(rng.standard_normal((n_birth, d), dtype=np.float32))
        children += [(b, [], "birth") for b in births]
        slot = rng.permutation(n)  # child c lands in slot slot[c]: layer l+1 is a relabelling
        new_dirs = np.empty_like(dirs)
        new_ids = np.empty(n, dtype=np.int64)
        new_plain = np.ones(n, dtype=bool)
        for c, (vec, parents, kind) in enumerate(children):
            new_dirs[slot[c]] = vec
            new_plain[slot[c]] = kind == "birth" or (kind == "carry" and plain[parents[0]])
            if kind == "carry":
                new_ids[slot[c]] = ids[-1][parents[0]]
            else:
                new_ids[slot[c]] = next_concept
                next_concept += 1
            truth += [dict(layer_a=layer, feature_a=p, layer_b=layer + 1, feature_b=int(slot[c]), kind=kind)
                      for p in parents]
            if kind == "birth":
                truth.append(dict(layer_a=None, feature_a=None, layer_b=layer + 1, feature_b=int(slot[c]), kind=kind))
        truth += [dict(layer_a=layer, feature_a=int(p), layer_b=None, feature_b=None, kind="death") for p in dead]
        dirs, plain = new_dirs, new_plain
        decs.append(dirs)
        ids.append(new_ids)
    return decs, ids, truth


def sibling(cfg: SynthConfig, rng, base: np.ndarray, shared: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sibling layer: (decoder, encoder directions, slot -> base feature or -1, encoder-agrees flag)."""
    n, d = base.shape
    keep = rng.permutation(n)[: round(shared * n)]
    dec = unit(rng.standard_normal((n, d), dtype=np.float32))  # orphans everywhere first
    slots = rng.permutation(n)[: len(keep)]
    dec[slots] = noisy(rng, base[keep], cfg.seed_noise)
    enc = dec.copy()
    agree = np.ones(len(keep), dtype=bool)
    agree[: round(cfg.enc_disagree_frac * len(keep))] = False
    enc[slots[~agree]] = noisy(rng, dec[slots[~agree]], 2.0)  # cosine about 0.45 with the decoder
    origin = np.full(n, -1, dtype=np.int64)
    origin[slots] = keep
    enc_ok = np.zeros(n, dtype=bool)
    enc_ok[slots] = agree
    return dec, enc, origin, enc_ok


def widen(cfg: SynthConfig, rng, narrow: np.ndarray, width: int) -> tuple[np.ndarray, list[dict]]:
    """A wider dictionary [width, d] grown from `narrow` [n, d], and its truth rows (kind kept | split |
    duplicate | absorbed | novel; feature_a narrow, feature_b wide). A split parent is the normalised sum of
    its children; a duplicated one is kept once more plus 1 or 2 copies, which take novel slots."""
    n, d = narrow.shape
    order = rng.permutation(n)
    n_split, n_abs = round(cfg.width_split_frac * n), round(cfg.width_absorbed_frac * n)
    split, absorbed, kept = order[:n_split], order[n_split:n_split + n_abs], order[n_split + n_abs:]
    groups = rng.integers(2, 4, n_split)
    n_novel = width - len(kept) - int(groups.sum())
    if n_novel < n_abs:
        raise ValueError(f"width {width} is too small to grow {n} features (needs {width - n_novel + n_abs})")
    # (direction, narrow parent, kind) of each wide feature
    children = [(v, int(i), "kept") for v, i in zip(noisy(rng, narrow[kept], cfg.width_drift), kept)]
    for i, g in zip(split, groups):
        # r_k = cos(2πk/g) u + sin(2πk/g) v with u, v orthonormal and ⟂ parent: equal norms, Σ r_k = 0,
        # so Σ children ∝ parent exactly
        basis = rng.standard_normal((2, d))
        basis -= np.outer(basis @ narrow[i], narrow[i])
        u = basis[0] / np.linalg.norm(basis[0])
        v = basis[1] - (basis[1] @ u) * u
        v /= np.linalg.norm(v)
        for k in range(g):
            r = np.cos(2 * np.pi * k / g) * u + np.sin(2 * np.pi * k / g) * v
            children.append((unit(narrow[i] + cfg.width_spread * r), int(i), "split"))
    novel = unit(rng.standard_normal((n_novel, d), dtype=np.float32))
    for j, i in enumerate(absorbed):  # a novel feature carries a little of the absorbed narrow one
        novel[j] = unit(novel[j] + 0.3 * narrow[i])
    # duplicates from their own stream, written over novel slots: the rest of the family is drawn as before
    dup_rng = np.random.default_rng([cfg.seed, 3, width])
    dup = dup_rng.choice(kept, round(cfg.width_duplicate_frac * n), replace=False)
    copies = np.repeat(dup, dup_rng.integers(1, 3, len(dup)))
    if n_abs + len(copies) > n_novel:
        raise ValueError(f"width {width} is too small to grow {n} features (needs {width - n_novel + n_abs + len(copies)})")
    novel[n_abs:n_abs + len(copies)] = noisy(dup_rng, narrow[copies], cfg.width_drift)
    parent_of, twice = {n_abs + j: int(i) for j, i in enumerate(copies)}, set(dup.tolist())
    children = [(v, i, "duplicate" if k == "kept" and i in twice else k) for v, i, k in children]
    children += [(v, parent_of.get(j), "duplicate" if j in parent_of else "novel") for j, v in enumerate(novel)]
    slot = rng.permutation(width)
    wide = np.empty((width, d), dtype=np.float32)
    truth = []
    for c, (vec, parent, kind) in enumerate(children):
        wide[slot[c]] = vec
        truth.append(dict(kind=kind, feature_a=parent, feature_b=int(slot[c])))
    truth += [dict(kind="absorbed", feature_a=int(i), feature_b=int(slot[len(children) - n_novel + j]))
              for j, i in enumerate(absorbed)]
    return wide, truth


def thresholds(scale: np.ndarray, concepts: np.ndarray, layer: int) -> np.ndarray:
    """JumpReLU thresholds: a per-concept scale that a carried feature keeps, grown with depth as
    hidden-state norms grow. Concept -1 (an orphan) gets a fresh scale."""
    own = scale[np.where(concepts >= 0, concepts, len(scale) - 1 - np.arange(len(concepts)))]
    return (0.5 * (1 + 0.1 * layer) * own).astype(np.float32)


HOOKS = {"resid": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


def write_sae(folder: Path, dec: np.ndarray, enc: np.ndarray, theta: np.ndarray, layer: int,
              seed: int, dataset: str, site: str = "resid") -> str:
    """Write one JumpReLU SAE in the sae_lens layout (cfg.json + sae_weights.safetensors)."""
    from safetensors.numpy import save_file

    n, d = dec.shape
    folder.mkdir(parents=True, exist_ok=True)
    hook = f"blocks.{layer}.{HOOKS[site]}"
    save_file({"W_enc": np.ascontiguousarray(enc.T), "W_dec": dec, "b_enc": np.zeros(n, np.float32),
               "b_dec": np.zeros(d, np.float32), "threshold": theta}, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": d, "d_sae": n, "dtype": "float32", "architecture": "jumprelu", "apply_b_dec_to_input": True,
           "normalize_activations": "none",
           "metadata": {"model_name": MODEL, "hook_name": hook, "dataset_path": dataset, "seed": seed}}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))
    meta = SAEMeta(model=MODEL, hook=hook, d_in=d, d_sae=n, arch="jumprelu", site=site, layer=layer,
                   seed=seed, dataset=dataset)
    return default_sae_id(meta)


def generate(cfg: SynthConfig, out: Path, progress=lambda: None) -> list[Path]:
    """Write the family under `out`; return the SAE folders in ingest order. `progress()` is called after each SAE."""
    sizes = (cfg.d_sae, *cfg.widths)
    for narrow, wide in zip(sizes, sizes[1:]):
        if wide <= narrow:  # checked before anything is written
            raise ValueError(f"widths must grow: {wide} after {narrow}")
    rng = np.random.default_rng(cfg.seed)
    decs, concepts, truth = evolve(cfg, rng)
    scale = rng.lognormal(0.0, 0.3, cfg.d_sae * (cfg.n_layers + 2) * 2)
    folders: list[Path] = []
    base_ids = []
    for layer, dec in enumerate(decs):
        folder = out / f"A-s0/layer_{layer}"
        theta = thresholds(scale, concepts[layer], layer)
        base_ids.append(write_sae(folder, dec, dec, theta, layer, 0, "A"))
        folders.append(folder)
        progress()
    rows = [dict(t, sae_a=None if t["layer_a"] is None else base_ids[t["layer_a"]],
                 sae_b=None if t["layer_b"] is None else base_ids[t["layer_b"]]) for t in truth]
    siblings = [(s, "A", cfg.seed_shared) for s in range(1, cfg.n_seeds)]
    if cfg.second_dataset:
        siblings.append((0, "B", cfg.dataset_shared))
    for seed, dataset, shared in siblings:
        for layer, base in enumerate(decs):
            dec, enc, origin, enc_ok = sibling(cfg, rng, base, shared)
            folder = out / f"{dataset}-s{seed}/layer_{layer}"
            own = np.where(origin >= 0, concepts[layer][np.maximum(origin, 0)], -1)
            sid = write_sae(folder, dec, enc, thresholds(scale, own, layer), layer, seed, dataset)
            folders.append(folder)
            for slot in range(cfg.d_sae):
                kind = "orphan" if origin[slot] < 0 else ("shared" if enc_ok[slot] else "decoder_only")
                rows.append(dict(layer_a=layer, feature_a=None if origin[slot] < 0 else int(origin[slot]),
                                 layer_b=layer, feature_b=slot, kind=kind, sae_a=base_ids[layer], sae_b=sid))
            progress()
    if cfg.flow:
        rows += _flow_saes(cfg, decs, truth, base_ids, out, folders, progress)
    if cfg.widths:
        rows += _width_family(cfg, decs[cfg.width_layer], base_ids[cfg.width_layer], out, folders, progress)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("kind", pa.string()), ("sae_a", pa.string()), ("feature_a", pa.int32()), ("layer_a", pa.int32()),
        ("sae_b", pa.string()), ("feature_b", pa.int32()), ("layer_b", pa.int32())]))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / GROUND_TRUTH)
    (out / "synth_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    return folders


def _flow_saes(cfg: SynthConfig, decs: list[np.ndarray], truth: list[dict], base_ids: list[str], out: Path,
               folders: list[Path], progress) -> list[dict]:
    """MLP-out and attention-out SAEs for layers 1.. of the base stack. Of the features born at layer L,
    half are written by the MLP, a quarter by attention, the rest come from nowhere; 15% of the carried
    ones are also in the MLP's output (processed: RES&MLP). Truth rows: kind 'origin:<class>'."""
    rng = np.random.default_rng([cfg.seed, 2])
    rows = []
    for layer in range(1, cfg.n_layers):
        kinds = {t["feature_b"]: t["kind"] for t in truth if t["layer_b"] == layer}
        gram = decs[layer] @ decs[layer].T
        np.fill_diagonal(gram, 0)
        twin = gram.max(1) >= 0.5  # a split's co-children: an MLP copy of one would also reach the other
        born = rng.permutation(sorted(f for f, k in kinds.items() if k == "birth"))
        carried = rng.permutation(sorted(f for f, k in kinds.items() if k == "carry" and not twin[f]))
        by_mlp, by_attn = born[: len(born) // 2], born[len(born) // 2: len(born) // 2 + len(born) // 4]
        processed = carried[: round(0.15 * len(carried))]
        origin = {int(f): ("RES" if k != "birth" else "from nowhere") for f, k in kinds.items()}
        origin.update({int(f): "MLP" for f in by_mlp} | {int(f): "ATT" for f in by_attn}
                      | {int(f): "RES&MLP" for f in processed})
        for site, held in (("mlp", np.concatenate([by_mlp, processed])), ("attn", by_attn)):
            dec = unit(rng.standard_normal((cfg.d_sae, cfg.d_in), dtype=np.float32))
            slots = rng.permutation(cfg.d_sae)[: len(held)]
            dec[slots] = noisy(rng, decs[layer][held.astype(int)], cfg.drift)
            folder = out / f"A-s0-{site}/layer_{layer}"
            theta = (0.5 * rng.lognormal(0.0, 0.3, cfg.d_sae)).astype(np.float32)
            sid = write_sae(folder, dec, dec, theta, layer, 0, "A", site)
            folders.append(folder)
            rows += [dict(kind=f"{site}_copy", sae_a=sid, feature_a=int(slot), layer_a=layer, sae_b=base_ids[layer],
                          feature_b=int(f), layer_b=layer) for slot, f in zip(slots, held)]
            progress()
        rows += [dict(kind=f"origin:{o}", sae_a=None, feature_a=None, layer_a=None, sae_b=base_ids[layer],
                      feature_b=f, layer_b=layer) for f, o in sorted(origin.items())]
    return rows


def _width_family(cfg: SynthConfig, base: np.ndarray, base_id: str, out: Path, folders: list[Path],
                  progress) -> list[dict]:
    """Write layer `width_layer` at each of cfg.widths, each grown from the one before; truth rows."""
    if not 0 <= cfg.width_layer < cfg.n_layers:
        raise ValueError(f"width_layer {cfg.width_layer} is not a layer of the stack (0..{cfg.n_layers - 1})")
    rng = np.random.default_rng([cfg.seed, 1])  # its own stream: adding widths leaves the family as it was
    narrow, narrow_id, rows = base, base_id, []
    for width in cfg.widths:
        wide, truth = widen(cfg, rng, narrow, width)
        folder = out / f"A-s0-w{width}/layer_{cfg.width_layer}"
        theta = (0.5 * (1 + 0.1 * cfg.width_layer) * rng.lognormal(0.0, 0.3, width)).astype(np.float32)
        wide_id = write_sae(folder, wide, wide, theta, cfg.width_layer, 0, "A")
        folders.append(folder)
        rows += [dict(t, sae_a=narrow_id, layer_a=cfg.width_layer, sae_b=wide_id, layer_b=cfg.width_layer)
                 for t in truth]
        narrow, narrow_id = wide, wide_id
        progress()
    return rows


def n_saes(cfg: SynthConfig) -> int:
    return cfg.n_layers * (cfg.n_seeds + int(cfg.second_dataset)) + len(cfg.widths) + 2 * (cfg.n_layers - 1) * cfg.flow
