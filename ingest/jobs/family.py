"""A real SAE family: a bundled model's activations (MiniLM, SmolLM2-135M) on two Python-shipped corpora, SAEs
per layer × seed × dataset trained with sae_lens, ingested, matched by weights and by activations; one layer also
at other dictionary sizes, matched across widths (feature splitting), and at its sub-layer outputs (feature
flow). One plan and one builder for every model (docs/design.md, Training a family). Cached throughout."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from atlas.match.pair import MatchParams
from atlas.methods import SIBLING_METHODS
from atlas.store import Atlas
from atlas_ingest.activations import (MANIFEST, ActivationConfig, block_output, collect, load_hook, load_tokens, read_manifest,
                                 stored_hooks)
from atlas_ingest.training import TrainConfig, check_tokens, train_sae

FLOW_HOOKS = ("hook_mlp_out", "hook_attn_out")
"""Sub-layer outputs the flow SAEs read (MiniLM: before the add + LayerNorm; docs/design.md, Hooks on a
post-LN BERT). attn_out rather than attn.hook_z, so its decoder lives where the residual SAE's does and the
weight-based flow classes can be set beside the activation-based ones."""
RESIDUAL_WRITERS = ("hook_mlp_out", "hook_attn_out")
"""Sub-layer hooks whose SAE decoders live in the residual stream: only these are matched to a residual SAE by
decoder cosine; any other flow hook (attn.hook_z, per-head space) by activation correlation alone."""
SMOLLM = "SmolLM2-135M-Instruct"
TRANSCODER = ("ln2.hook_normalized", "hook_mlp_out")
"""A transcoder's input and output hooks: the MLP's own input (after its norm) to the MLP's output."""


@dataclass
class FamilyPlan:
    """What to build. The defaults are the demo's family, ≤ 10 minutes on 2 idle cores (README, Two
    commands): 3 adjacent prose layers, a seed sibling and a dataset sibling of the middle one, which is also
    trained at 2 other widths and at its MLP and attention outputs. `full()` is `atlas minilm --full`: every
    layer, 2 seed and 1 dataset siblings each, 4.2M samples (about 1 h)."""

    layers: list[int] = field(default_factory=lambda: [2, 3, 4])
    """Layers of the base stack (prose, seed 0)."""
    seeds: list[int] = field(default_factory=lambda: [1])
    """Extra seeds (prose) trained on `sibling_layers`: seed siblings."""
    sibling_layers: list[int] = field(default_factory=lambda: [3])
    code_layers: list[int] = field(default_factory=lambda: [3])
    """Layers that also get a dataset sibling trained on Python source (seed 0)."""
    max_tokens: int = 200_000
    corr_tokens: int | None = 100_000
    """Tokens the activation statistics run over (None: all of them)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(samples=800_000))
    model: str = "all-MiniLM-L6-v2"
    widths: list[int] = field(default_factory=lambda: [384, 1536])
    """Other dictionary sizes of `width_layer` (prose, seed 0): width siblings of the base stack's SAE."""
    width_layer: int = 3
    flow_layers: list[int] = field(default_factory=lambda: [3])
    """Layers that also get an MLP-out and an attention-out SAE (prose, seed 0): feature-flow origins
    measured on activations beside the weight-based ones (each needs the residual SAE of the layer before)."""
    flow_hooks: tuple[str, ...] = FLOW_HOOKS
    """The sub-layer hooks of each flow layer (TransformerLens names after `blocks.L.`)."""
    transcoder_layers: list[int] = field(default_factory=list)
    """Layers that also get a transcoder (prose, seed 0) from TRANSCODER's input to its output hook."""
    transcoder_l1: float | None = None
    """The transcoders' L1 coefficient (None: train's). SmolLM2's at the SAEs' 4.0: 82% dead, FVU 0.95."""
    label: str = "MiniLM"
    """The family's name in progress lines and the status panel."""

    @classmethod
    def smollm(cls) -> FamilyPlan:
        """`atlas smollm`: SmolLM2-135M-Instruct (bundled GGUF), residual stream at layers 3-6 (the capture stops at
        block 6: 7 of 30 blocks run), a seed and a code sibling, a narrower width, the MLP-out and per-head
        attention output (attn.hook_z) SAEs and a transcoder at layer 5. b_dec starts at the mean (its residual stream's mean is as
        large as a token's spread; docs/design.md, SmolLM2). Sized for 2 cores (README, A decoder LM family)."""
        return cls(layers=[3, 4, 5, 6], seeds=[1], sibling_layers=[5], code_layers=[5], max_tokens=60_000,
                   corr_tokens=30_000, model=SMOLLM, widths=[576], width_layer=5, flow_layers=[5],
                   flow_hooks=("hook_mlp_out", "attn.hook_z"), transcoder_layers=[5], transcoder_l1=1.0, label="SmolLM2",
                   train=TrainConfig(d_sae=1152, samples=150_000, batch=2048, eval_tokens=6_000, l1_coefficient=4.0,
                                     b_dec_init="mean"))

    @classmethod
    def full(cls) -> FamilyPlan:
        return cls(layers=list(range(6)), seeds=[1, 2], sibling_layers=list(range(6)), code_layers=list(range(6)),
                   max_tokens=300_000, corr_tokens=None, train=TrainConfig(), widths=[384, 1536], width_layer=3,
                   flow_layers=[2, 4])

    def width_saes(self) -> list[tuple[str, int, int, int]]:
        """(dataset, seed, layer, d_sae) of the extra-width SAEs."""
        return [("prose", 0, self.width_layer, w) for w in self.widths if w != self.train.d_sae]

    def flow_saes(self) -> list[tuple[str, int, int, str]]:
        """(dataset, seed, layer, hook) of the MLP-out and attention-out SAEs."""
        return [("prose", 0, layer, f"blocks.{layer}.{h}") for layer in self.flow_layers for h in self.flow_hooks]

    def transcoders(self) -> list[tuple[str, int, int, str, str]]:
        """(dataset, seed, layer, input hook, output hook) of the transcoders."""
        return [("prose", 0, layer, f"blocks.{layer}.{TRANSCODER[0]}", f"blocks.{layer}.{TRANSCODER[1]}")
                for layer in self.transcoder_layers]

    def saes(self) -> list[tuple[str, int, int]]:
        """(dataset, seed, layer) of every SAE to train, layer by layer (one layer's activations in memory)."""
        out = [("prose", 0, layer) for layer in self.layers]
        out += [("prose", s, layer) for s in self.seeds for layer in self.sibling_layers]
        out += [("code", 0, layer) for layer in self.code_layers]
        return sorted(out, key=lambda x: (x[0], x[2], x[1]))


STEPS = ("activations", "SAEs", "widths", "matches", "correlations")
"""The steps of build_family, in order, as its `progress(step, done, total, item, unit)` names them."""
UNITS = {"activations": "tokens", "SAEs": "samples", "widths": "pairs", "matches": "pairs", "correlations": "pairs"}
"""What each step counts: progress moves within a step (tokens through the model, samples through the trainer)."""


def activations_for(plan: FamilyPlan, dataset: str, cache: Path, progress=None) -> Path:
    """The cached activations of `dataset` (computed first if missing); progress(tokens so far), counted here:
    tqdm's own count stands still where tqdm is disabled (no terminal, as under `make demo`)."""
    cfg = ActivationConfig(model=plan.model, corpus=dataset,
                           layers=sorted(set(plan.layers) | set(plan.sibling_layers) | set(plan.code_layers)),
                           hooks=sorted({h for d, _, _, h in plan.flow_saes() if d == dataset}
                                        | {h for d, _, _, *io in plan.transcoders() if d == dataset for h in io}),
                           max_tokens=plan.max_tokens)
    folder = cache / "activations" / f"{dataset}-{plan.max_tokens}"
    if (folder / MANIFEST).exists() and set(stored_hooks(read_manifest(folder))) >= set(cfg.all_hooks()):
        return folder
    seen = 0
    with tqdm(total=plan.max_tokens or None, desc=f"activations {dataset}", unit="tok", disable=None) as bar:
        def tokens(n):
            nonlocal seen
            seen += n
            bar.update(n)
            if progress:
                progress(min(seen, plan.max_tokens) if plan.max_tokens else seen)  # the last window may overshoot
        collect(cfg, folder, progress=tokens)
    return folder


def _publish_sae(atlas: Atlas, folder: Path, q: dict) -> str:
    """Ingest one trained SAE and its training metrics, so a running server shows it at once. The plan says
    what each of the family's ids holds: one trained under another plan (`--full` after the default, other
    sizes) is replaced, with every row derived from it."""
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.sources import read_sae

    ingest(atlas, [lambda: read_sae(folder)], replace=True)  # site from the hook
    with atlas.write() as w:
        # sources are stored resolved (atlas_ingest.sources.read_sae)
        sid = w.con.execute("SELECT sae_id FROM saes WHERE source = ?", [str(Path(folder).resolve())]).fetchone()[0]
        metrics = {k: q[k] for k in ("fvu", "l0", "dead_frac", "samples", "tokens")}
        w.insert_rows("training", [dict(sae_id=sid, **metrics)], replace=True)
    return sid


def _label(atlas: Atlas, sae_id: str, folder: Path, x, acts_dir: Path) -> int:
    """Label a trained SAE's features by the tokens they fire on (docs/design.md, Labels) unless it has labels."""
    from atlas.encode import encode_record
    from atlas_ingest import models
    from atlas_ingest.jobs.labels import label_by_tokens
    from atlas_ingest.sources import read_sae

    with atlas.read() as con:
        if con.execute("SELECT count(label) FROM features WHERE sae_id = ?", [sae_id]).fetchone()[0]:
            return 0
    rec = read_sae(folder)
    tokens = load_tokens(acts_dir)
    tokenizer = models.tokenizer(read_manifest(acts_dir)["config"]["model"])
    return label_by_tokens(atlas, sae_id, lambda chunk: encode_record(rec, chunk), x, tokens["token_ids"],
                           tokens["doc"], tokenizer, rec.meta.d_sae)


def build_family(atlas: Atlas, plan: FamilyPlan, cache: Path, log=print, progress=None) -> dict:
    """Everything in order; each step skips what its cache or the atlas already holds. Each SAE is
    published when it is trained, each pair when it is matched, each dataset's correlations after their one
    pass, so a server shows the family growing; `progress(step, done, total, item, unit)` reports each of STEPS
    as it moves (UNITS). Each SAE's features are labelled by their tokens' lift (atlas_ingest.token_labels) when trained."""
    from atlas.queries.selection import select_pairs
    from atlas_ingest.jobs.correlate import correlate
    from atlas_ingest.jobs.match import run_match

    def step(name, done, total, item=None):
        if progress:
            progress(name, done, total, item, UNITS[name])

    if plan.max_tokens:  # before any work: a budget the held-out tokens eat whole would train on nothing
        check_tokens(plan.max_tokens, plan.train, "each corpus")
    if plan.widths and plan.width_layer not in plan.layers:
        raise ValueError(f"width layer {plan.width_layer} is not one of the family's layers {plan.layers}")
    for what, layers in (("flow", plan.flow_layers), ("transcoder", plan.transcoder_layers)):
        if not set(layers) <= set(plan.layers):
            raise ValueError(f"{what} layers {layers} are not all among the family's layers {plan.layers}")
    datasets = [d for d in ("prose", "code") if any(p[0] == d for p in plan.saes())]
    acts_dir, tokens = {}, plan.max_tokens * len(datasets)
    for i, d in enumerate(datasets):
        acts_dir[d] = activations_for(plan, d, cache,
                                      lambda n, i=i: step("activations", i * plan.max_tokens + n, tokens, d))
        log(f"activations {d}: {read_manifest(acts_dir[d])['n_tokens']} tokens")
        step("activations", (i + 1) * plan.max_tokens, tokens, d)
    quality, family = {}, set()
    held: dict[tuple[str, str], object] = {}

    def acts(dataset, hook):
        if (dataset, hook) not in held:
            held.clear()  # one hook's activations in memory at a time
            held[(dataset, hook)] = load_hook(acts_dir[dataset], hook)
        return held[(dataset, hook)]

    todo = [(d, s, layer, block_output(plan.model, layer), plan.train, f"{d}-s{s}-L{layer}", None)
            for d, s, layer in plan.saes()]
    todo += [(d, s, layer, block_output(plan.model, layer), replace(plan.train, d_sae=w), f"{d}-s{s}-L{layer}-w{w}", None)
             for d, s, layer, w in plan.width_saes()]
    todo += [(d, s, layer, hook, plan.train, f"{d}-s{s}-{hook}", None) for d, s, layer, hook in plan.flow_saes()]
    tc_train = plan.train if plan.transcoder_l1 is None else replace(plan.train, l1_coefficient=plan.transcoder_l1)
    todo += [(d, s, layer, hook, tc_train, f"{d}-s{s}-{hook}-transcoder", out) for d, s, layer, hook, out in plan.transcoders()]
    total, done = sum(t[4].samples for t in todo), 0
    step("SAEs", 0, total)
    for n, (dataset, seed, layer, hook, train, key, hook_out) in enumerate(todo, 1):
        what = f"SAE {n} of {len(todo)}: {key}"
        step("SAEs", done, total, what)
        target = None
        if hook_out:  # a transcoder: its input and its output hook's activations, the two in memory
            x_in = load_hook(acts_dir[dataset], hook)
            held.clear()
            held[(dataset, hook)], target = x_in, load_hook(acts_dir[dataset], hook_out)
        folder, q = train_sae(acts(dataset, hook), layer, seed, dataset, cache / "saes", train, plan.model, hook,
                              progress=lambda s, base=done, cap=train.samples: step("SAEs", base + min(s, cap), total, what),
                              target=target, hook_out=hook_out)
        target = None
        done += train.samples
        quality[key] = q
        sid = _publish_sae(atlas, folder, q)
        family.add(sid)
        _label(atlas, sid, folder, acts(dataset, hook), acts_dir[dataset])
        log(f"SAE {key}: FVU {q['fvu']:.3f}, L0 {q['l0']:.1f}, dead {q['dead_frac']:.1%}")
        step("SAEs", done, total, what)
    held.clear()
    with atlas.read() as con:
        def ours(pairs):
            return [p for p in pairs if p[0] in family and p[1] in family]

        layer_pairs = ours(select_pairs(con, "distance", distance=len(plan.layers)))
        siblings = ours(select_pairs(con, "siblings"))
        adjacent = ours(select_pairs(con, "adjacent"))
        width_pairs = ours(select_pairs(con, "widths"))
        width = dict(con.execute("SELECT sae_id, d_sae FROM saes").fetchall())
        flow = [(x, r) for x, r in ours(select_pairs(con, "flow")) if width[x] == width[r]]  # not the width siblings
        hook = dict(con.execute("SELECT sae_id, coalesce(hook_out, hook) FROM saes").fetchall())  # where it writes
        weight_flow = [(x, r) for x, r in flow if hook[x].endswith(RESIDUAL_WRITERS)]  # decoders in the residual stream
    step("widths", 0, len(width_pairs))
    if width_pairs:
        from atlas_ingest.jobs.widths import run_widths

        count = itertools.count(1)
        s = run_widths(atlas, width_pairs,
                       progress=lambda a, b: step("widths", next(count), len(width_pairs), f"{a} / {b}"))
        log(f"widths: {len(width_pairs)} pairs; narrow features " + ", ".join(f"{n} {c}" for c, n in sorted(s.classes.items())))
    jobs = ((layer_pairs, ["decoder_cos", "decoder_mse"]), (siblings, list(SIBLING_METHODS)),
            (weight_flow, ["decoder_cos"]))
    total = sum(len(p) * len(m) for p, m in jobs)
    count = itertools.count(1)
    step("matches", 0, total)
    for pairs, methods in jobs:  # one pair per commit, published at once (publish_every=0)
        run_match(atlas, pairs, methods, MatchParams(), publish_every=0, batch=1,
                  progress=lambda a, b, method: step("matches", next(count), total, f"{a} / {b} ({method})"))
    with atlas.read() as con:
        dataset_of = dict(con.execute("SELECT sae_id, dataset FROM saes").fetchall())
        have = set(con.execute("SELECT sae_a, sae_b FROM pair_stats WHERE method = 'activation_corr'").fetchall())
    wanted = adjacent + siblings + flow
    by_dataset: dict[str, list] = {}
    for a, b in wanted:
        if (a, b) not in have:  # a rerun correlates only what is missing
            by_dataset.setdefault(dataset_of[a], []).append((a, b))
    done = len(wanted) - sum(map(len, by_dataset.values()))
    step("correlations", done, len(wanted))
    count = itertools.count(done + 1)
    for dataset, pairs in by_dataset.items():  # one pass over the dataset's tokens: its pairs land together
        correlate(atlas, pairs, acts_dir[dataset], max_tokens=plan.corr_tokens, one_pass=True,
                  progress=lambda a, b: step("correlations", next(count), len(wanted), f"{a} / {b}"))
    return quality
