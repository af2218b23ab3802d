"""The real SAE family: MiniLM activations on two Python-shipped corpora, SAEs per layer × seed ×
dataset trained with sae_lens, ingested, matched by weights and by activations; one layer also at other
dictionary sizes, matched across widths (feature splitting). Cached throughout."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from atlas.match.pair import MatchParams
from atlas.store import Atlas
from ingest.activations import MANIFEST, ActivationConfig, collect, load_hook, read_manifest, resid_post, stored_hooks
from ingest.training import TrainConfig, train_sae


FLOW_HOOKS = ("hook_mlp_out", "hook_attn_out")
"""Sub-layer outputs the flow SAEs read (MiniLM: before the add + LayerNorm; docs/design.md, Hooks on a
post-LN BERT). attn_out rather than attn.hook_z, so its decoder lives where the residual SAE's does and the
weight-based flow classes can be set beside the activation-based ones."""


@dataclass
class FamilyPlan:
    layers: list[int] = field(default_factory=lambda: list(range(6)))
    """Layers of the base stack (prose, seed 0)."""
    seeds: list[int] = field(default_factory=lambda: [1])
    """Extra seeds (prose) trained on `sibling_layers`: seed siblings."""
    sibling_layers: list[int] = field(default_factory=lambda: [1, 3, 5])
    code_layers: list[int] = field(default_factory=lambda: [1, 3, 5])
    """Layers that also get a dataset sibling trained on Python source (seed 0)."""
    max_tokens: int = 300_000
    corr_tokens: int | None = 100_000
    """Tokens the activation statistics run over (None: all of them)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: str = "all-MiniLM-L6-v2"
    widths: list[int] = field(default_factory=list)
    """Other dictionary sizes of `width_layer` (prose, seed 0): width siblings of the base stack's SAE
    (`atlas minilm` asks for 384 and 1536)."""
    width_layer: int = 3
    flow_layers: list[int] = field(default_factory=lambda: [2, 4])
    """Layers that also get an MLP-out and an attention-out SAE (prose, seed 0): feature-flow origins
    measured on activations beside the weight-based ones."""

    @classmethod
    def full(cls) -> FamilyPlan:
        return cls(seeds=[1, 2], sibling_layers=list(range(6)), code_layers=list(range(6)), corr_tokens=None,
                   widths=[384, 1536])

    def width_saes(self) -> list[tuple[str, int, int, int]]:
        """(dataset, seed, layer, d_sae) of the extra-width SAEs."""
        return [("prose", 0, self.width_layer, w) for w in self.widths if w != self.train.d_sae]

    def flow_saes(self) -> list[tuple[str, int, int, str]]:
        """(dataset, seed, layer, hook) of the MLP-out and attention-out SAEs."""
        return [("prose", 0, layer, f"blocks.{layer}.{h}") for layer in self.flow_layers for h in FLOW_HOOKS]

    def saes(self) -> list[tuple[str, int, int]]:
        """(dataset, seed, layer) of every SAE to train, layer by layer (one layer's activations in memory)."""
        out = [("prose", 0, layer) for layer in self.layers]
        out += [("prose", s, layer) for s in self.seeds for layer in self.sibling_layers]
        out += [("code", 0, layer) for layer in self.code_layers]
        return sorted(out, key=lambda x: (x[0], x[2], x[1]))


def activations_for(plan: FamilyPlan, dataset: str, cache: Path, progress=None) -> Path:
    cfg = ActivationConfig(model=plan.model, corpus=dataset,
                           layers=sorted(set(plan.layers) | set(plan.sibling_layers) | set(plan.code_layers)),
                           hooks=sorted(h for d, _, _, h in plan.flow_saes() if d == dataset),
                           max_tokens=plan.max_tokens)
    folder = cache / "activations" / f"{dataset}-{plan.max_tokens}"
    if (folder / MANIFEST).exists() and set(stored_hooks(read_manifest(folder))) >= set(cfg.all_hooks()):
        return folder
    with tqdm(total=plan.max_tokens or None, desc=f"activations {dataset}", unit="tok", disable=None) as bar:
        collect(cfg, folder, progress=bar.update)
    return folder


def build_family(atlas: Atlas, plan: FamilyPlan, cache: Path, log=print, bar=None) -> dict:
    """Everything in order; each step skips what its cache or the atlas already holds."""
    from ingest.jobs.correlate import correlate
    from ingest.jobs.ingest import ingest
    from ingest.jobs.match import run_match, select_pairs
    from ingest.sources import read_sae

    if plan.widths and plan.width_layer not in plan.layers:
        raise ValueError(f"width layer {plan.width_layer} is not one of the family's layers {plan.layers}")
    if not set(plan.flow_layers) <= set(plan.layers):
        raise ValueError(f"flow layers {plan.flow_layers} are not all among the family's layers {plan.layers}")
    acts_dir = {d: activations_for(plan, d, cache) for d in ("prose", "code") if any(p[0] == d for p in plan.saes())}
    for d, f in acts_dir.items():
        log(f"activations {d}: {json.loads((f / MANIFEST).read_text())['n_tokens']} tokens")
    folders, quality, keys = [], {}, []
    held: dict[tuple[str, str], object] = {}

    def acts(dataset, hook):
        if (dataset, hook) not in held:
            held.clear()  # one hook's activations in memory at a time
            held[(dataset, hook)] = load_hook(acts_dir[dataset], hook)
        return held[(dataset, hook)]

    todo = [(d, s, layer, resid_post(layer), plan.train, f"{d}-s{s}-L{layer}") for d, s, layer in plan.saes()]
    todo += [(d, s, layer, resid_post(layer), replace(plan.train, d_sae=w), f"{d}-s{s}-L{layer}-w{w}")
             for d, s, layer, w in plan.width_saes()]
    todo += [(d, s, layer, hook, plan.train, f"{d}-s{s}-{hook}") for d, s, layer, hook in plan.flow_saes()]
    for dataset, seed, layer, hook, train, key in todo:
        folder, q = train_sae(acts(dataset, hook), layer, seed, dataset, cache / "saes", train, plan.model, hook)
        folders.append(folder)
        keys.append(key)
        quality[key] = q
        log(f"SAE {key}: FVU {q['fvu']:.3f}, L0 {q['l0']:.1f}, dead {q['dead_frac']:.1%}")
        if bar:
            bar()
    held.clear()
    done = ingest(atlas, [lambda f=f: read_sae(f) for f in folders])  # site from the hook
    family = set(done.added + done.replaced + done.unchanged + done.merged)
    with atlas.write() as w:
        for folder, key in zip(folders, keys):
            q = quality[key]
            # sources are stored resolved (ingest.sources.read_sae)
            sid = w.con.execute("SELECT sae_id FROM saes WHERE source = ?", [str(Path(folder).resolve())]).fetchone()[0]
            w.con.execute("INSERT OR REPLACE INTO training VALUES (?, ?, ?, ?, ?, ?)",
                          [sid, q["fvu"], q["l0"], q["dead_frac"], q["samples"], q["tokens"]])
    with atlas.read() as con:
        def ours(pairs):
            return [p for p in pairs if p[0] in family and p[1] in family]

        layer_pairs = ours(select_pairs(con, "distance", distance=len(plan.layers)))
        siblings = ours(select_pairs(con, "siblings"))
        adjacent = ours(select_pairs(con, "adjacent"))
        width_pairs = ours(select_pairs(con, "widths"))
        width = dict(con.execute("SELECT sae_id, d_sae FROM saes").fetchall())
        flow = [(x, r) for x, r in ours(select_pairs(con, "flow")) if width[x] == width[r]]  # not the width siblings
    if width_pairs:
        from ingest.jobs.widths import run_widths

        s = run_widths(atlas, width_pairs)
        log(f"widths: {len(width_pairs)} pairs; narrow features " + ", ".join(f"{n} {c}" for c, n in sorted(s.classes.items())))
    for pairs, methods in ((layer_pairs, ["decoder_cos", "decoder_mse"]), (siblings, ["decoder_cos", "encoder_cos"]),
                           (flow, ["decoder_cos"])):
        with tqdm(total=len(pairs) * len(methods), desc="match", unit="pair", disable=None) as bar:
            run_match(atlas, pairs, methods, MatchParams(), progress=lambda *_: bar.update())
    with atlas.read() as con:
        dataset_of = dict(con.execute("SELECT sae_id, dataset FROM saes").fetchall())
    by_dataset: dict[str, list] = {}
    for a, b in adjacent + siblings + flow:
        by_dataset.setdefault(dataset_of[a], []).append((a, b))
    for dataset, pairs in by_dataset.items():
        with tqdm(total=len(pairs), desc=f"correlate {dataset}", unit="pair", disable=None) as bar:
            correlate(atlas, pairs, acts_dir[dataset], progress=lambda *_: bar.update(), max_tokens=plan.corr_tokens,
                      one_pass=True)
    return quality
