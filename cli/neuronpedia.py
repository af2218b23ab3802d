"""Neuronpedia both ways: atlas labels import (labels and stats from its exports) and atlas neuronpedia (atlas
features as its lists: lineage, orphans, pair)."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import threshold_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print the list as JSON instead of its URL.")


@main.group()
def neuronpedia():
    """Atlas features as Neuronpedia lists: items {modelId, layer, index, description} and a quick-list URL."""


def _print_list(lst, as_json: bool) -> None:
    import msgspec

    if as_json:
        click.echo(msgspec.json.encode(lst).decode())
        return
    if lst.missing:
        click.echo(f"left out (no neuronpedia id; `atlas saes set SAE --neuronpedia-id ...`): {', '.join(lst.missing)}", err=True)
    if not lst.items:
        raise ValueError(f"{lst.name}: no features with a Neuronpedia id to list")
    click.echo(f"{lst.name}: {len(lst.items)} features{' (truncated)' if lst.truncated else ''}")
    click.echo(lst.url)


@neuronpedia.command("lineage")
@click.argument("sae")
@click.argument("feature", type=click.IntRange(min=0))
@threshold_options()
@json_option
@click.pass_obj
def neuronpedia_lineage(atlas, sae, feature, threshold, as_json):
    """The lineage of FEATURE of SAE across layers."""
    from atlas.queries.neuronpedia import lineage_list

    with atlas.read() as snap:
        _print_list(lineage_list(snap, sae, feature, threshold), as_json)


@neuronpedia.command("orphans")
@click.argument("sae")
@click.option("--tau", type=float, default=None, help="Cosine bar of the sharing rule [default: 0.7].")
@click.option("--by", type=click.Choice(["any", "seed", "dataset"]), default="any", show_default=True)
@json_option
@click.pass_obj
def neuronpedia_orphans(atlas, sae, tau, by, as_json):
    """The orphan features of SAE (shared with none of its matched siblings)."""
    from atlas.queries.neuronpedia import orphans_list

    with atlas.read() as snap:
        _print_list(orphans_list(snap, sae, tau, by), as_json)


@neuronpedia.command("pair")
@click.argument("sae_a")
@click.argument("sae_b")
@threshold_options()
@json_option
@click.pass_obj
def neuronpedia_pair(atlas, sae_a, sae_b, threshold, as_json):
    """The matches of a layer (or sibling) pair, both sides, best first."""
    from atlas.queries.neuronpedia import pair_list

    with atlas.read() as snap:
        _print_list(pair_list(snap, sae_a, sae_b, threshold), as_json)


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
    from atlas_ingest.jobs.labels import import_labels

    s = import_labels(atlas, path, sae_id, explainer)
    for sid, n in s.labels.items():
        click.echo(f"{sid}: {n} features labelled (explainer {s.explainers[sid]})")
    for sid, n in s.stats.items():
        click.echo(f"{sid}: stats for {n} features")
    for sid, n in s.examples.items():
        click.echo(f"{sid}: {n} top-activation examples")
    click.echo(f"imported {s.files} files: {sum(s.labels.values())} features labelled")
