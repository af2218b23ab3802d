"""atlas correlate: SAE pairs by activations, each SAE encoded on its own hook."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import SAEPair, Selection, bar, executor_options, opened_executor


@main.command()
@click.option("--activations", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of activation shards keyed by hook (written by the minilm job or ingest.activations.collect).")
@click.option("--model", "live_model", default=None,
              help="Instead of --activations: run this model (all-MiniLM-L6-v2, an HF path) over --corpus and "
                   "correlate in one pass, writing no activations.")
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
    from ingest.activations import ActivationConfig
    from ingest.jobs.correlate import correlate as run
    from ingest.jobs.match import select_pairs

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
