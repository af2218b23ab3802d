"""atlas check-edges: lineage edges checked by ablation on held-out text."""

from __future__ import annotations

import click

from .findings import num
from .group import main
from .options import bar


@main.command("check-edges")
@click.option("--stack", default=None, help="Only pairs of this stack [default: every stack].")
@click.option("--method", default="decoder_cos", show_default=True, help="Matching method whose edges are checked.")
@click.option("--tau", type=click.FloatRange(-1, 1), default=0.7, show_default=True, help="Score bar of an edge.")
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
def check_edges_cmd(atlas, stack, method, tau, per_kind, n_random, max_step, model, corpus, skip_tokens, n_windows,
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
    from atlas.queries.common import sae_row
    from ingest.ablation import heldout_windows, load_model
    from ingest.hooks import HookedRunner
    from ingest.jobs.check_edges import CheckParams, check_edges, stack_pairs

    params = CheckParams(method=method, tau=tau, per_kind=per_kind, random=n_random, max_step=max_step,
                         max_windows=max_windows, seed=seed)
    with atlas.read() as con:
        pairs = stack_pairs(con, method, max_step, stack)
        models = sorted({sae_row(con, a)["model"] for a, _, _ in pairs})
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
