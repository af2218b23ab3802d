"""SAEs in the atlas: ingest, list (saes; saes set, saes reroot), info."""

from __future__ import annotations

from pathlib import Path

import click

from atlas_ingest.sources import READERS

from .group import main
from .options import bar, executor_options, opened_executor


def ingest_paths(atlas, paths, overrides, replace, factory, fmt=None, executor="in-process", address=None):
    """Ingest SAE folders, files or release names and print what changed."""
    from atlas_ingest.jobs.ingest import ingest_paths as run

    with opened_executor(executor, address) as ex, bar(len(paths), "ingest", unit="sae") as b:
        summary = run(atlas, paths, overrides, fmt, replace, factory, executor=ex, progress=lambda *_: b.update())
    rate = summary.features / summary.seconds if summary.seconds else 0
    merged = f", {len(summary.merged)} already stored under another id (metadata merged)" if summary.merged else ""
    click.echo(f"ingested into {atlas.path}: {len(summary.added)} added, {len(summary.replaced)} replaced, "
               f"{len(summary.unchanged)} unchanged{merged} ({summary.features} features, {rate:,.0f} features/s)")


@main.command("ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice([n for n, r in READERS.items() if r.detect]), default=None,
              help="Layout of the files [default: detected].")
@click.option("--recursive", "-r", is_flag=True, help="Ingest every SAE folder found under each SOURCE.")
@click.option("--release", is_flag=True,
              help="SOURCES are sae_lens releases: RELEASE:SAE_ID for one SAE, RELEASE for all it lists "
                   "(from the Hugging Face Hub, or its local cache with HF_HUB_OFFLINE=1).")
@click.option("--id", "sae_id", default=None, help="SAE id to store under [default: model-site+layer-kind-width-variant-seed-dataset].")
@click.option("--model", default=None, help="Model name, where the file does not say.")
@click.option("--hook", default=None, help="Hook name, e.g. blocks.12.hook_resid_post.")
@click.option("--site", type=click.Choice(["resid", "mlp", "attn"]), default=None)
@click.option("--layer", type=int, default=None)
@click.option("--seed", type=int, default=None, help="Training seed of the SAE.")
@click.option("--dataset", default=None, help="Training dataset of the SAE.")
@click.option("--neuronpedia-id", default=None, help="modelId/sourceId, e.g. gemma-2-2b/20-gemmascope-res-16k.")
@click.option("--replace", is_flag=True, help="Replace an SAE stored under the same id with other weights.")
@click.option("--index-factory", default=None, help='FAISS factory string [default: "Flat"; "HNSW32" from 256k features].')
@executor_options("Where SAEs are read and indexed (the atlas is written here either way).")
@click.pass_obj
def ingest_cmd(atlas, sources, fmt, recursive, release, sae_id, replace, index_factory, executor, address, **meta):
    """Read SAEs into the atlas: sae_lens folders, Gemma Scope trees, sparsify runs, dictionary_learning
    sweeps (see README: supported layouts), or sae_lens releases by name with --release.

    One job is one transaction: if any SAE is bad, nothing is stored and the atlas stays as it was.
    The same weights by two routes are stored once (by hash); the second route fills missing metadata.
    """
    from atlas.sae import SAEError
    from atlas_ingest.sources import find_sae_folders, release_names

    overrides = dict(meta, sae_id=sae_id)
    if release:
        names = release_names(sources)
        if sae_id and len(names) > 1:
            raise ValueError("--id names one SAE; give one RELEASE:SAE_ID with it")
        ingest_paths(atlas, names, overrides, replace, index_factory, "release", executor, address)
        return
    paths = [Path(s) for s in sources]
    if recursive:
        paths = [f for p in paths for f in find_sae_folders(p)]
        if not paths:
            raise SAEError(f"no SAE folders under {', '.join(sources)}")
    if sae_id and len(paths) > 1:
        raise ValueError("--id names one SAE; give one SOURCE with it")
    ingest_paths(atlas, paths, overrides, replace, index_factory, fmt, executor, address)


@main.group(invoke_without_command=True)
@click.option("--stack", default=None, help="Only this stack.")
@click.pass_context
def saes(ctx, stack):
    """List the SAEs in the atlas (subcommands: set, reroot)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console

    from atlas.queries.saes import list_saes

    with ctx.obj.read() as con:
        rows = list_saes(con, stack)
    cells = [{c: "" if getattr(r, c) is None else str(getattr(r, c)) for c in COLUMNS} for r in rows]
    console = Console()
    if not console.is_terminal:  # piped: every column, one tab-separated line per SAE
        for line in [COLUMNS, *([r[c] for c in COLUMNS] for r in cells)]:
            click.echo("\t".join(line))
        return
    shown, left = fit_columns(cells, console.width)
    console.print(saes_table(cells, shown))
    if left:
        click.echo(f"(left out at this width: {', '.join(left)}; a wider terminal, or piped output, shows every column)")


COLUMNS = ("sae_id", "layer", "d_sae", "seed", "dataset", "site", "kind", "arch", "variant", "d_in", "model", "stack")
"""`atlas saes` columns, most telling first: a narrow terminal keeps a prefix of them, each cell whole."""


def fit_columns(cells: list[dict], width: int) -> tuple[list[str], list[str]]:
    """The columns that fit `width` whole (the id always), in COLUMNS order, and those left out; columns with no
    value in any row are left out without a word."""
    used = [c for c in COLUMNS if any(r[c] for r in cells)] or list(COLUMNS[:1])
    shown, total = [], 1
    for c in used:
        need = max([len(c)] + [len(r[c]) for r in cells]) + 3  # padding and the border
        if shown and total + need > width:
            break
        shown.append(c)
        total += need
    return shown, [c for c in used if c not in shown]


def saes_table(cells: list[dict], shown: list[str]):
    from rich.table import Table

    table = Table(*shown)
    for c in table.columns:
        c.no_wrap, c.overflow = True, "fold"
    for r in cells:
        table.add_row(*(r[c] for c in shown))
    return table


@saes.command("set")
@click.argument("sae")
@click.option("--neuronpedia-id", required=True, help="modelId/sourceId, e.g. gemma-2-2b/20-gemmascope-res-16k ('' clears it).")
@click.pass_obj
def saes_set(atlas, sae, neuronpedia_id):
    """Set an SAE's Neuronpedia id after ingest (links, label import and lists use it)."""
    from atlas_ingest.jobs.ingest import set_neuronpedia_id

    set_neuronpedia_id(atlas, sae, neuronpedia_id or None)
    click.echo(f"{sae}: neuronpedia_id = {neuronpedia_id or 'none'}")


@saes.command("reroot")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_obj
def saes_reroot(atlas, old, new):
    """Point SAE sources under folder OLD to folder NEW, after moving the weights (checked before storing)."""
    from atlas_ingest.jobs.ingest import reroot

    n = reroot(atlas, old, new)
    click.echo(f"re-rooted {n} SAE sources from {old} to {new.resolve()}")


@main.command()
@click.argument("sae")
@click.pass_obj
def info(atlas, sae):
    """Show one SAE's metadata, feature summary and stored pairs."""
    from atlas.queries.saes import sae_summary

    with atlas.read() as con:
        s = sae_summary(con, sae)
    for name, value in s.row.items():
        click.echo(f"{name:>15}: {value}")
    click.echo(f"{'features':>15}: {s.n_features} (mean threshold {s.mean_threshold}, mean density {s.mean_density}, "
               f"{s.n_labelled} labelled)")
    click.echo(f"{'pairs':>15}: {s.pairs or 'none yet (atlas match)'}")
