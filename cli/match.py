"""Matching SAE pairs: by weights (atlas match; --pairs widths: narrow features against wider SAEs) and by
activations (atlas correlate, each SAE encoded on its own hook)."""

from __future__ import annotations

from pathlib import Path

import click

from atlas.match.params import MatchParams, WidthParams
from atlas.methods import DEFAULT, SIBLING_METHODS, WEIGHT_METHODS

from .group import main
from .options import SAEPair, Selection, bar, executor_options, opened_executor, options_from


@main.command()
@click.option("--pairs", "selection", type=Selection(), default="adjacent", show_default=True,
              help="Which SAE pairs to match; widths: each SAE with its next wider sibling (feature splitting); "
                   "flow: MLP/attention-out SAEs with the residual SAE of their layer.")
@click.option("--distance", type=int, default=2, show_default=True, help="Largest layer distance for --pairs distance.")
@click.option("--stack", default=None, help="Only pairs in (or, for siblings, touching) this stack.")
@click.option("--pair", "explicit", type=SAEPair(), multiple=True, help="SAE_A:SAE_B, repeatable (implies --pairs list).")
@click.option("--method", "methods", multiple=True, type=click.Choice(WEIGHT_METHODS),
              help=f"Repeatable [default: {DEFAULT}; siblings also {', '.join(SIBLING_METHODS[1:])}].")
@options_from(MatchParams, "k", "floor", "solver", flags={"k": "-k"})
@click.option("--tau", type=float, default=None,
              help=f"Score at which an assigned pair counts as matched [default: {MatchParams.tau}]; with --pairs "
                   f"widths the least cosine of a child to its parent [default: {WidthParams.tau}].")
@click.option("--publish-every", type=float, default=60.0, show_default=True,
              help="Seconds between publishing finished pairs to readers (a kill loses at most this much).")
@executor_options("Where pair tasks run; ray needs `pip install .[distributed]`.")
@click.pass_obj
def match(atlas, selection, distance, stack, explicit, methods, k, floor, tau, solver, publish_every, executor, address):
    """Match SAE pairs by weight similarity (candidates -> one-to-one assignment -> pair stats)."""
    from atlas.queries.selection import select_pairs
    from atlas_ingest.jobs.match import run_match

    widths = selection == "widths"
    if explicit:
        selection = "list"
    with atlas.read() as con:
        pairs = select_pairs(con, selection, distance, stack, list(explicit))
    methods = list(methods) or (list(SIBLING_METHODS) if selection == "siblings" else [DEFAULT])
    if not pairs:
        raise ValueError(f"no pairs selected ({selection}); see `atlas saes`")
    if widths:
        _match_widths(atlas, pairs, tau)
        return
    params = MatchParams(k=k, floor=floor, solver=solver, **({} if tau is None else {"tau": tau}))
    with opened_executor(executor, address) as ex, bar(len(pairs) * len(methods), "match") as b:
        summary = run_match(atlas, pairs, methods, params, publish_every, progress=lambda *_: b.update(), executor=ex)
    click.echo(f"matched {len(summary.computed)} pair-methods, skipped {len(summary.skipped)} already done "
               f"({summary.seconds:.1f} s)")
    if summary.results:
        click.echo(summary.report())


def _match_widths(atlas, pairs, tau):
    from atlas_ingest.jobs.widths import run_widths

    params = WidthParams() if tau is None else WidthParams(tau=tau)
    with bar(len(pairs), "widths") as b:
        s = run_widths(atlas, pairs, params, progress=lambda *_: b.update())
    click.echo(f"matched {len(s.computed)} width pairs, skipped {len(s.skipped)} already done ({s.seconds:.1f} s); "
               f"narrow features: " + ", ".join(f"{n} {c}" for c, n in sorted(s.classes.items())))


@main.command()
@click.option("--activations", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of activation shards keyed by hook (written by the minilm job or atlas_ingest.activations.collect).")
@click.option("--model", "live_model", default=None,
              help="Instead of --activations: run this model over --corpus and correlate in one pass, writing no "
                   "activations: bundled (all-MiniLM-L6-v2, SmolLM2-135M-Instruct), a .gguf file, an HF folder or id, "
                   "or a TransformerLens name (gpt2, gemma-2-2b).")
@click.option("--corpus", default="prose", show_default=True, help="Corpus for --model (prose, code).")
@click.option("--pairs", "selection", type=Selection(leave_out=("distance", "widths")), default="adjacent",
              show_default=True, help="flow: MLP/attention-out SAEs and transcoders with the residual SAE of their layer.")
@click.option("--stack", default=None, help="Only pairs in (or, for siblings, touching) this stack.")
@click.option("--pair", "explicit", type=SAEPair(), multiple=True, help="SAE_A:SAE_B, repeatable.")
@click.option("--max-tokens", type=int, default=None, help="Use only the first N tokens [--model: 100,000].")
@click.option("--one-pass", is_flag=True, help="All pairs in one pass over the tokens, each SAE encoded once per batch.")
@executor_options()
@click.pass_obj
def correlate(atlas, activations, live_model, corpus, selection, stack, explicit, max_tokens, one_pass, executor, address):
    """Activation correlation of SAE pairs, each SAE encoded on its own hook: correlations, activation_corr
    matches, compositions (AND/OR/PASS), examples, and SAE Match's checks of the weight matches."""
    from atlas.queries.selection import select_pairs
    from atlas_ingest.activations import ActivationConfig
    from atlas_ingest.jobs.correlate import correlate as run

    if (activations is None) == (live_model is None):
        raise ValueError("give either --activations FOLDER or --model NAME (a live run)")
    source = activations if live_model is None else ActivationConfig(model=live_model, corpus=corpus,
                                                                     max_tokens=max_tokens or 100_000)
    with atlas.read() as con:
        pairs = select_pairs(con, "list" if explicit else selection, 1, stack, list(explicit))
    if not pairs:
        raise ValueError(f"no pairs selected ({selection}); see `atlas saes`")
    with opened_executor(executor, address) as ex, bar(len(pairs), "correlate") as b:
        s = run(atlas, pairs, source, progress=lambda *_: b.update(), max_tokens=max_tokens, executor=ex,
                one_pass=one_pass)
    click.echo(f"correlated {len(s.pairs)} pairs in {s.seconds:.1f} s; compositions {sum(s.compositions.values())}")
