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
@click.option("--model", default=None, help="Model to run [default: the SAEs' model; MiniLM is bundled].")
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

    Cost: one forward pass per sampled parent (the progress bar counts them); about 700 on the default MiniLM
    family, a few minutes on 2 cores. Results: `atlas findings`, lineage answers (causal_drop), SQL edge_checks.
    """
    from atlas.queries.checks import pair_checks
    from ingest.ablation import heldout_windows, load_model
    from ingest.hooks import HookedRunner
    from ingest.jobs.check_edges import CheckParams, check_edges, stack_pairs

    method, tau = threshold.method.name, threshold.tau
    params = CheckParams(method=method, tau=tau, per_kind=per_kind, random=n_random, max_step=max_step,
                         max_windows=max_windows, seed=seed)
    with atlas.read() as con:
        pairs = stack_pairs(con, method, max_step, stack)
        models = sorted({con.sae(a)["model"] for a, _, _ in pairs})
    if not pairs:
        raise ValueError(f"no matched stack pairs of {method}{f' in stack {stack}' if stack else ''}: run `atlas match`")
    if model is None and len(models) > 1:
        raise ValueError(f"the pairs are of several models ({', '.join(models)}): pick one stack with --stack")
    model = model or models[0]
    runner = HookedRunner(load_model(model))
    windows = heldout_windows(model, corpus, skip_tokens, n_windows)
    with bar(None, "check-edges", unit="ablation") as b:
        def progress(done, total):
            b.total = total
            b.update(done - b.n)
        s = check_edges(atlas, runner, windows, pairs, params, stack, progress=progress)
    click.echo(f"checked {s.checks} edges and controls of {len(s.pairs)} pairs with {s.ablations} ablations "
               f"on {len(windows)} held-out windows ({s.seconds:.1f} s)")
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
@click.option("--compare", is_flag=True, help="Steer the model on held-out text with the whole set and with its first "
              "direction alone; print each chain feature's mean activation (clean, first only, whole set).")
@click.option("--alpha", type=float, default=8.0, show_default=True, help="--compare: added length of each unit direction.")
@click.option("--windows", "n_windows", type=click.IntRange(min=1), default=16, show_default=True,
              help="--compare: held-out prose windows (after the first 300,000 tokens).")
@click.pass_obj
def steering_cmd(atlas, sae, feature, out, threshold, compare, alpha, n_windows):
    """The steering set of FEATURE of SAE: the decoder directions (with norms, hooks, layers, feature ids) of
    its carry chain across the stack, as JSON or (--out) a safetensors file a steering tool loads."""
    import msgspec

    from atlas.queries.steering import steering_set, to_safetensors

    with atlas.read() as snap:
        s = steering_set(snap, sae, feature, threshold)
        rows = {v.sae_id: snap.sae(v.sae_id) for v in s.vectors}
    if compare:
        from ingest.ablation import heldout_windows, load_model, steering_rise
        from ingest.hooks import HookedRunner
        from ingest.sources import load_stored

        saes = {i: load_stored(i, r["source"], r["format"], r["sha256"], layer=r["layer"]) for i, r in rows.items()}
        rise = steering_rise(HookedRunner(load_model(s.model)), heldout_windows(s.model, "prose", 300_000, n_windows),
                             saes, [(v.sae_id, v.feature, v.direction) for v in s.vectors], alpha)
        click.echo(f"mean activation of the chain's features on {n_windows} held-out windows (alpha {alpha:g}): "
                   f"clean / first direction only / whole set")
        for i, v in enumerate(s.vectors):
            click.echo(f"  layer {v.layer} {v.sae_id}/{v.feature}: {rise['clean'][i]:.3f} / {rise['first'][i]:.3f} / "
                       f"{rise['chain'][i]:.3f}")
        return
    if out is None:
        click.echo(msgspec.json.encode(s).decode())
        return
    out.write_bytes(to_safetensors(s))
    click.echo(f"wrote {out}: {len(s.vectors)} directions of {sae}/{feature}'s carry chain at "
               + ", ".join(v.hook for v in s.vectors))
