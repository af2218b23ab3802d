"""Commands that run the model on held-out text along lineages: atlas check-edges (edges checked by ablation)
and atlas steering (a carry chain's decoder directions, to steer a model with)."""

from __future__ import annotations

from pathlib import Path

import click

from .findings import num
from .group import main
from .options import bar, threshold_options


@main.command("check-edges")
@click.option("--stack", default=None, help="Only pairs of this stack [default: every stack].")
@threshold_options(per_pair=False)
@click.option("--per-kind", type=click.IntRange(min=1), default=16, show_default=True,
              help="Edges sampled per layer pair and kind (carry, split, merge, gap).")
@click.option("--random", "n_random", type=click.IntRange(min=1), default=32, show_default=True,
              help="Random non-edges per layer pair: the control.")
@click.option("--max-step", type=click.IntRange(min=1), default=2, show_default=True,
              help="Pairs up to this many stack layers apart (2: gaps across one missing layer).")
@click.option("--model", default=None, help="Model to run for every selected pair [default: each stack's own model, "
              "one at a time: bundled (MiniLM, SmolLM2-135M-Instruct), a .gguf file, an HF folder or id, a "
              "TransformerLens name].")
@click.option("--corpus", default="prose", show_default=True, help="Text the held-out windows come from.")
@click.option("--skip-tokens", type=click.IntRange(min=0), default=300_000, show_default=True,
              help="Held out: windows start after this many corpus tokens (the tokens `atlas minilm` trains on).")
@click.option("--windows", "n_windows", type=click.IntRange(min=1), default=64, show_default=True,
              help="Held-out windows of 126 tokens.")
@click.option("--max-windows", type=click.IntRange(min=1), default=2, show_default=True,
              help="Windows per ablation (those where the parent fires).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the edge sample.")
@click.pass_obj
def check_edges_cmd(atlas, stack, threshold, per_kind, n_random, max_step, model, corpus, skip_tokens, n_windows,
                    max_windows, seed):
    """Check lineage edges by ablation on real activations (docs/design.md, Edges under ablation).

    Sampling: per layer pair of a stack (up to --max-step layers apart) and edge kind, up to --per-kind edges
    scoring >= --tau whose parent fires on at least 2 held-out tokens: carry, split, merge between adjacent
    layers; across a skipped layer, gap (the parent has no edge to the layer between) and carry (it has one).
    The control: --random pairs of the same layer pair that are not edges (a firing parent, a child active on
    its tokens, scoring below --tau).

    Check: on the first --max-windows held-out windows where the parent fires, its decoder contribution
    (activation x decoder row) is subtracted at its hook at those tokens; the model runs on to the child's
    hook and the child's relative drop (1 - ablated / clean, summed over those tokens) goes to edge_checks.
    An edge holds when its drop exceeds the 95th percentile of its pair's control drops.

    Cost: one clean pass over the windows, then one forward pass per sampled parent (the progress bars count
    them); about 700 on the default MiniLM family, a few minutes on 2 cores. Without --stack and --model, every
    stack whose model can be loaded is checked, one model at a time; stacks of a model that cannot (the
    synthetic family's `synth`) are named and left out. Results: `atlas findings`, lineage answers
    (causal_drop), SQL edge_checks.
    """
    from atlas.queries.checks import pair_checks
    from atlas_ingest import models
    from atlas_ingest.ablation import heldout_windows
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.jobs.check_edges import CheckParams, check_edges, stack_pairs

    method, tau = threshold.method.name, threshold.tau
    params = CheckParams(method=method, tau=tau, per_kind=per_kind, random=n_random, max_step=max_step,
                         max_windows=max_windows, seed=seed)
    with atlas.read() as con:
        pairs = stack_pairs(con, method, max_step, stack)
        model_of = {a: con.sae(a)["model"] for a, _, _ in pairs}
    if not pairs:
        raise ValueError(f"no matched stack pairs of {method}{f' in stack {stack}' if stack else ''}: run `atlas match`")
    groups: dict[str, list] = {}
    for p in pairs:
        groups.setdefault(model or model_of[p[0]], []).append(p)
    skipped = []
    for name in list(groups):
        try:
            models.resolve(name)
        except ValueError as e:
            skipped.append(f"{name} ({len(groups.pop(name))} pairs): {e}")
    if not groups:
        raise ValueError("no stack's model can be run here: " + "; ".join(skipped))
    checks = ablations = n_pairs = 0
    seconds, n_windows_run = 0.0, 0
    for i, (name, group) in enumerate(groups.items(), 1):
        click.echo(f"model {i}/{len(groups)}: {name}, {len(group)} stack pairs", err=True)
        runner = HookedRunner(models.load(name).model)
        windows = heldout_windows(name, corpus, skip_tokens, n_windows)
        bars: dict = {}

        def progress(step, done, total):
            b = bars.get(step)
            if b is None:
                b = bars[step] = bar(total, f"check-edges {step}", unit="window" if step == "clean" else "ablation")
            b.total = total
            b.update(done - b.n)

        try:
            s = check_edges(atlas, runner, windows, group, params, stack, progress=progress)
        finally:
            for b in bars.values():
                b.close()
            models.release()  # one model at a time
        checks, ablations, n_pairs = checks + s.checks, ablations + s.ablations, n_pairs + len(s.pairs)
        seconds, n_windows_run = seconds + s.seconds, len(windows)
    click.echo(f"checked {checks} edges and controls of {n_pairs} pairs with {ablations} ablations "
               f"on {n_windows_run} held-out windows ({seconds:.1f} s)")
    for line in skipped:
        click.echo(f"  not checked, model {line}")
    with atlas.read() as con:
        for r in pair_checks(con, method, stack):
            click.echo(f"  {r['sae_a']} -> {r['sae_b']} {r['kind']:>6}: {r['tested']}/{r['n']} tested, "
                       f"{num(r['held_frac'], '{:.0%}')} hold, median drop {num(r['median_drop'], '{:.3f}')}")


@main.command("steering")
@click.argument("sae")
@click.argument("feature", type=click.IntRange(min=0))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the set as a safetensors file (tensors directions [n, d_in], norms, layers, features; "
                   "metadata hooks, sae_ids) instead of printing JSON.")
@threshold_options()
@click.option("--compare", is_flag=True, help="Steer the model on held-out text with the whole set, its first direction "
              "alone and (a causal LM) random directions of equal norm at the set's hooks; print each chain feature's "
              "mean activation, and on a causal LM the log-probability of the feature's top tokens, the KL at "
              "unrelated tokens and greedy continuations.")
@click.option("--alpha", type=float, default=8.0, show_default=True, help="--compare: added length of each unit direction.")
@click.option("--windows", "n_windows", type=click.IntRange(min=1), default=16, show_default=True,
              help="--compare: held-out windows of --corpus (after the first --skip-tokens tokens).")
@click.option("--corpus", default="prose", show_default=True, help="--compare: text the held-out windows come from.")
@click.option("--skip-tokens", type=click.IntRange(min=0), default=300_000, show_default=True,
              help="--compare: held out: windows start after this many corpus tokens.")
@click.pass_obj
def steering_cmd(atlas, sae, feature, out, threshold, compare, alpha, n_windows, corpus, skip_tokens):
    """The steering set of FEATURE of SAE: the decoder directions (with norms, hooks, layers, feature ids) of
    its carry chain across the stack, as JSON or (--out) a safetensors file a steering tool loads."""
    import msgspec

    from atlas.queries.steering import steering_set, to_safetensors

    with atlas.read() as snap:
        s = steering_set(snap, sae, feature, threshold)
        rows = {v.sae_id: snap.sae(v.sae_id) for v in s.vectors}
    if compare:
        _compare(s, rows, sae, feature, alpha, n_windows, corpus, skip_tokens)
        return
    if out is None:
        click.echo(msgspec.json.encode(s).decode())
        return
    out.write_bytes(to_safetensors(s))
    click.echo(f"wrote {out}: {len(s.vectors)} directions of {sae}/{feature}'s carry chain at "
               + ", ".join(v.hook for v in s.vectors))


def _compare(s, rows, sae, feature, alpha, n_windows, corpus, skip_tokens):
    """`atlas steering --compare`: the set against its first direction (and, on a causal LM, a random one)."""
    import numpy as np

    from atlas_ingest import models
    from atlas_ingest.ablation import heldout_windows, steering_rise
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.sources import load_stored

    saes = {i: load_stored(i, r["source"], r["format"], r["sha256"], layer=r["layer"], hook=r["hook"],
                           hook_out=r.get("hook_out")) for i, r in rows.items()}
    lm = models.load(s.model)
    runner, windows = HookedRunner(lm.model), heldout_windows(s.model, corpus, skip_tokens, n_windows)
    if not lm.causal:
        rise = steering_rise(runner, windows, saes, [(v.sae_id, v.feature, v.direction) for v in s.vectors], alpha)
        click.echo(f"mean activation of the chain's features on {n_windows} held-out windows (alpha {alpha:g}): "
                   f"clean / first direction only / whole set")
        for i, v in enumerate(s.vectors):
            click.echo(f"  layer {v.layer} {v.sae_id}/{v.feature}: {rise['clean'][i]:.3f} / {rise['first'][i]:.3f} / "
                       f"{rise['chain'][i]:.3f}")
        return
    from atlas_ingest.steering import CONDITIONS, Member, compare

    members = [Member(v.sae_id, v.feature, np.asarray(v.direction, np.float32), v.hook) for v in s.vectors]
    target = next(i for i, v in enumerate(s.vectors) if (v.sae_id, v.feature) == (sae, feature))
    c = compare(runner, lm.tokenizer, windows, saes, members, target, alpha)
    click.echo(f"steering {sae}/{feature} on {s.model}: {len(members)} directions at "
               f"{', '.join(m.hook for m in members)}; alpha {alpha:g} per unit direction, {n_windows} held-out "
               f"{corpus} windows")
    click.echo(f"  {'condition':<10} {'target act':>10} {'log p(top)':>10} {'KL unrel.':>10}   chain activations")
    for name in CONDITIONS:
        chain = " ".join(f"{a:.3f}" for a in c.activation[name])
        click.echo(f"  {name:<10} {c.activation[name][target]:>10.3f} {c.logprob[name]:>10.3f} {c.kl[name]:>10.4f}   {chain}")
    click.echo(f"  top tokens (its last direction through the unembedding): {' '.join(repr(t) for t in c.top_tokens)}")
    click.echo(f"  KL at the {c.unrelated} tokens where the feature is silent clean")
    for prompt, outs in c.continuations:
        click.echo(f"  prompt {prompt!r}")
        for name in CONDITIONS:
            click.echo(f"    {name:<7} {outs[name]!r}")
