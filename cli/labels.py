"""atlas labels import: feature labels and stats from Neuronpedia exports."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main


@main.group()
def labels():
    """Feature labels and stats from Neuronpedia exports."""


@labels.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sae", "sae_id", default=None, help="Store into this SAE instead of the one with the rows' neuronpedia id.")
@click.option("--explainer", default=None,
              help="Take labels by this explainer (explanationModelName, or the <explainer> of explanations-<explainer>/) "
                   "[default: per SAE, the one labelling most features].")
@click.pass_obj
def labels_import(atlas, path, sae_id, explainer):
    """Import a Neuronpedia export: v1/<model>/<source>/{explanations,features,activations}/*.jsonl[.gz],
    one of those folders alone, explanations-<explainer>/ folders, or the explanation export API's JSON array.
    Rows go to the SAE whose neuronpedia id is their modelId/layer."""
    from ingest.jobs.labels import import_labels

    s = import_labels(atlas, path, sae_id, explainer)
    for sid, n in s.labels.items():
        click.echo(f"{sid}: {n} features labelled (explainer {s.explainers[sid]})")
    for sid, n in s.stats.items():
        click.echo(f"{sid}: stats for {n} features")
    for sid, n in s.examples.items():
        click.echo(f"{sid}: {n} top-activation examples")
    click.echo(f"imported {s.files} files: {sum(s.labels.values())} features labelled")
