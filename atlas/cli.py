"""The `atlas` command line: init, synth, ingest, saes, info, match, serve.

Jobs and the server are imported inside each command, so `atlas --help` stays fast and atlas/ keeps
to its layer (docs/design.md, Layers: the CLI is the one place that wires ingest/ and api/ together).
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from .match.methods import WEIGHT_METHODS
from .sae import SAEError
from .store import SCHEMA_VERSION, Atlas, AtlasBusy, default_path


def _atlas(ctx) -> Atlas:
    return Atlas(ctx.obj["atlas"])


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sae" if "ingest" in desc or "synth" in desc else "pair",
                disable=None, dynamic_ncols=True)


class AtlasGroup(click.Group):
    """Every failure is one line on stderr (`error: ...`): exit 2 for bad input or a busy atlas, 1 for the
    rest. `atlas --debug ...` (or ATLAS_DEBUG=1) shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001  (one line for whatever went wrong; --debug for the rest)
            if (ctx.obj or {}).get("debug") or os.environ.get("ATLAS_DEBUG"):
                raise
            message, code = explain(e)
            click.secho(f"error: {message}", fg="red", err=True)
            sys.exit(code)


def explain(e: BaseException) -> tuple[str, int]:
    """(one line, exit code) for a failure of a command."""
    from .queries.records import QueryError

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
        where = getattr(e, "filename", None) or "the atlas folder"
        return (f"disk full writing {where}: free some space (or point --atlas elsewhere) and rerun; "
                f"nothing was published and the job's working files were removed"), 2
    if isinstance(e, (SAEError, AtlasBusy, KeyError, FileNotFoundError, ValueError, QueryError)):
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return " ".join(str(text).split()), 2
    first = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {first} (run `atlas --debug ...` for the traceback)", 1


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--atlas", "atlas_path", type=click.Path(path_type=Path), default=None,
              help="Atlas DuckDB file [default: $ATLAS_PATH or ./atlas.duckdb].")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure instead of one line.")
@click.pass_context
def main(ctx, atlas_path, debug):
    """Feature Atlas: how SAE features survive, change, split, die and are born across layers and seeds."""
    ctx.ensure_object(dict)
    ctx.obj["atlas"] = atlas_path or default_path()
    ctx.obj["debug"] = debug


@main.command()
@click.pass_context
def init(ctx):
    """Create an empty atlas (tables, views, schema version)."""
    atlas = _atlas(ctx)
    with atlas.write():
        pass
    click.echo(f"atlas ready at {atlas.path}")


@main.command()
@click.pass_context
def migrate(ctx):
    """Upgrade an atlas to this code's layout: version 4's matches, correlations and compositions move into
    table files (one Parquet file per pair) and the DuckDB file shrinks to the catalog. Safe to kill: the
    published atlas stays as it was until the new one is complete."""
    atlas = _atlas(ctx)
    if not atlas.exists():
        raise click.UsageError(f"no atlas at {atlas.path}: nothing to migrate")
    before = atlas.path.stat().st_size
    with atlas.write() as w:
        version = w.upgraded_from
        indexed = w.build_edge_indexes()
        n, size = w.con.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM parts").fetchone()
    if version == SCHEMA_VERSION:
        click.echo(f"{atlas.path} is already at schema version {SCHEMA_VERSION}; its views name its {n} table files "
                   f"in {atlas.tables_dir}" + (f"; wrote {indexed} missing edge indexes" if indexed else ""))
    else:
        click.echo(f"migrated {atlas.path} from schema version {version} to {SCHEMA_VERSION}: {n} table files "
                   f"({size / 1e6:,.1f} MB) in {atlas.tables_dir}; DuckDB file {before / 1e6:,.1f} MB -> "
                   f"{atlas.path.stat().st_size / 1e6:,.1f} MB")


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("synth"), show_default=True,
              help="Folder for the SAE folders and ground_truth.parquet.")
@click.option("--d-in", type=int, default=512, show_default=True, help="Model width (2304 = Gemma Scope 2b).")
@click.option("--d-sae", type=int, default=512, show_default=True, help="Features per SAE.")
@click.option("--layers", "n_layers", type=int, default=6, show_default=True)
@click.option("--seeds", "n_seeds", type=int, default=2, show_default=True, help="Seed siblings of the base stack.")
@click.option("--no-second-dataset", is_flag=True, help="Skip the dataset-B sibling stack.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the family.")
@click.option("--widths", "widths", default="2x,4x", show_default=True,
              help="Wider SAEs of layer 1 (width family): sizes, or Nx for N times --d-sae; '' for none.")
@click.option("--flow", is_flag=True, help="Also MLP-out and attention-out SAEs of the base stack (feature-flow "
              "origins); match them with `atlas match --pairs flow`.")
@click.option("--ingest/--no-ingest", "do_ingest", default=True, show_default=True,
              help="Ingest the family into the atlas.")
@click.pass_context
def synth(ctx, out, d_in, d_sae, n_layers, n_seeds, no_second_dataset, seed, widths, flow, do_ingest):
    """Write a planted-truth SAE family (sae_lens layout + ground truth) and ingest it."""
    from .synth import SynthConfig, generate, n_saes

    try:
        sizes = tuple(int(w[:-1]) * d_sae if w.endswith("x") else int(w) for w in widths.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"--widths takes sizes or Nx separated by commas, got {widths!r}") from None
    cfg = SynthConfig(d_in=d_in, d_sae=d_sae, n_layers=n_layers, n_seeds=n_seeds,
                      second_dataset=not no_second_dataset, seed=seed, widths=sizes, flow=flow,
                      width_layer=min(1, n_layers - 1))
    with _bar(n_saes(cfg), "synth") as bar:
        folders = generate(cfg, out, progress=lambda: bar.update())
    click.echo(f"wrote {len(folders)} SAEs and {out / 'ground_truth.parquet'}")
    if do_ingest:
        _ingest_paths(ctx, folders, {}, replace=False, factory=None)


def _ingest_paths(ctx, paths, overrides, replace, factory, fmt=None, executor="in-process", address=None):
    from ingest.executors import make_executor
    from ingest.jobs.ingest import ingest_paths

    atlas = _atlas(ctx)
    ex = make_executor(executor, address)
    try:
        with _bar(len(paths), "ingest") as bar:
            summary = ingest_paths(atlas, paths, overrides, fmt, replace, factory, executor=ex,
                                   progress=lambda *_: bar.update())
    finally:
        ex.close()
    rate = summary.features / summary.seconds if summary.seconds else 0
    merged = f", {len(summary.merged)} already stored under another id (metadata merged)" if summary.merged else ""
    click.echo(f"ingested into {atlas.path}: {len(summary.added)} added, {len(summary.replaced)} replaced, "
               f"{len(summary.unchanged)} unchanged{merged} ({summary.features} features, {rate:,.0f} features/s)")


@main.command("ingest")
@click.argument("sources", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["saelens", "gemmascope", "sparsify", "dictionary_learning"]),
              default=None, help="Layout of the files [default: detected].")
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
@click.option("--executor", type=click.Choice(["in-process", "ray"]), default="in-process", show_default=True,
              help="Where SAEs are read and indexed (the atlas is written here either way).")
@click.option("--address", default=None, help="Ray cluster address [default: start a local one].")
@click.pass_context
def ingest_cmd(ctx, sources, fmt, recursive, release, sae_id, replace, index_factory, executor, address, **meta):
    """Read SAEs into the atlas: sae_lens folders, Gemma Scope trees, sparsify runs, dictionary_learning
    sweeps (see README: supported layouts), or sae_lens releases by name with --release.

    One job is one transaction: if any SAE is bad, nothing is stored and the atlas stays as it was.
    The same weights by two routes are stored once (by hash); the second route fills missing metadata.
    """
    from ingest.sources import find_sae_folders, release_names

    overrides = dict(meta, sae_id=sae_id)
    if release:
        names = release_names(sources)
        if sae_id and len(names) > 1:
            raise ValueError("--id names one SAE; give one RELEASE:SAE_ID with it")
        _ingest_paths(ctx, names, overrides, replace, index_factory, "release", executor, address)
        return
    paths = [Path(s) for s in sources]
    if recursive:
        paths = [f for p in paths for f in find_sae_folders(p)]
        if not paths:
            raise SAEError(f"no SAE folders under {', '.join(sources)}")
    if sae_id and len(paths) > 1:
        raise ValueError("--id names one SAE; give one SOURCE with it")
    _ingest_paths(ctx, paths, overrides, replace, index_factory, fmt, executor, address)


@main.group(invoke_without_command=True)
@click.option("--stack", default=None, help="Only this stack.")
@click.pass_context
def saes(ctx, stack):
    """List the SAEs in the atlas (subcommands: set, reroot)."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.table import Table

    cols = ("sae_id", "model", "site", "layer", "kind", "d_in", "d_sae", "arch", "variant", "seed", "dataset", "stack")
    with _atlas(ctx).read() as con:
        rows = con.execute(f"SELECT {', '.join(cols)} FROM saes WHERE ? IS NULL OR stack = ? ORDER BY stack, layer",
                           [stack, stack]).fetchall()
    table = Table(*cols)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    Console().print(table)


@saes.command("set")
@click.argument("sae")
@click.option("--neuronpedia-id", required=True, help="modelId/sourceId, e.g. gemma-2-2b/20-gemmascope-res-16k ('' clears it).")
@click.pass_context
def saes_set(ctx, sae, neuronpedia_id):
    """Set an SAE's Neuronpedia id after ingest (links, label import and lists use it)."""
    from ingest.jobs.ingest import set_neuronpedia_id

    set_neuronpedia_id(_atlas(ctx), sae, neuronpedia_id or None)
    click.echo(f"{sae}: neuronpedia_id = {neuronpedia_id or 'none'}")


@saes.command("reroot")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.pass_context
def saes_reroot(ctx, old, new):
    """Point SAE sources under folder OLD to folder NEW, after moving the weights (checked before storing)."""
    from ingest.jobs.ingest import reroot

    n = reroot(_atlas(ctx), old, new)
    click.echo(f"re-rooted {n} SAE sources from {old} to {new.resolve()}")


@main.command()
@click.argument("sae")
@click.pass_context
def info(ctx, sae):
    """Show one SAE's metadata, feature summary and stored pairs."""
    with _atlas(ctx).read() as con:
        cur = con.execute("SELECT * FROM saes WHERE sae_id = ?", [sae])
        row = cur.fetchone()
        if row is None:
            raise KeyError(f"unknown SAE {sae!r}: see `atlas saes`")
        for name, value in zip([d[0] for d in cur.description], row):
            click.echo(f"{name:>15}: {value}")
        n, thr, dens, lab = con.execute("SELECT count(*), avg(threshold), avg(density), count(label) "
                                        "FROM features WHERE sae_id = ?", [sae]).fetchone()
        click.echo(f"{'features':>15}: {n} (mean threshold {thr}, mean density {dens}, {lab} labelled)")
        pairs = con.execute("SELECT method, count(*) FROM pair_stats WHERE sae_a = ? OR sae_b = ? GROUP BY 1",
                            [sae, sae]).fetchall()
        click.echo(f"{'pairs':>15}: {dict(pairs) or 'none yet (atlas match)'}")


@main.command()
@click.option("--pairs", "selection", type=click.Choice(["adjacent", "distance", "siblings", "widths", "flow", "list"]),
              default="adjacent", show_default=True,
              help="Which SAE pairs to match; widths: each SAE with its next wider sibling (feature splitting); "
                   "flow: MLP/attention-out SAEs with the residual SAE of their layer.")
@click.option("--distance", type=int, default=2, show_default=True, help="Largest layer distance for --pairs distance.")
@click.option("--stack", default=None, help="Only pairs in (or, for siblings, touching) this stack.")
@click.option("--pair", "explicit", multiple=True, help="SAE_A:SAE_B, repeatable (implies --pairs list).")
@click.option("--method", "methods", multiple=True, type=click.Choice(WEIGHT_METHODS),
              help="Repeatable [default: decoder_cos; siblings also encoder_cos].")
@click.option("-k", "k", type=int, default=16, show_default=True, help="Candidates kept per feature and direction.")
@click.option("--floor", type=float, default=0.3, show_default=True, help="Below this cosine a feature stays unassigned.")
@click.option("--tau", type=float, default=None,
              help="Score at which an assigned pair counts as matched [default: 0.7]; with --pairs widths the "
                   "least cosine of a child to its parent [default: 0.5].")
@click.option("--solver", type=click.Choice(["auto", "dense", "sparse"]), default="auto", show_default=True)
@click.option("--publish-every", type=float, default=60.0, show_default=True,
              help="Seconds between publishing finished pairs to readers (a kill loses at most this much).")
@click.option("--executor", type=click.Choice(["in-process", "ray"]), default="in-process", show_default=True,
              help="Where pair tasks run; ray needs `pip install .[distributed]`.")
@click.option("--address", default=None, help="Ray cluster: auto, ray://host:10001 [default: start a local one].")
@click.pass_context
def match(ctx, selection, distance, stack, explicit, methods, k, floor, tau, solver, publish_every, executor, address):
    """Match SAE pairs by weight similarity (candidates -> one-to-one assignment -> pair stats)."""
    from ingest.jobs.match import run_match, select_pairs

    from .match.pair import MatchParams

    atlas = _atlas(ctx)
    widths = selection == "widths"
    if explicit:
        selection = "list"
    pairs_given = [tuple(p.split(":", 1)) for p in explicit]
    if any(len(p) != 2 for p in pairs_given):
        raise ValueError("--pair takes SAE_A:SAE_B")
    with atlas.read() as con:
        pairs = select_pairs(con, selection, distance, stack, pairs_given)
    methods = list(methods) or (["decoder_cos", "encoder_cos"] if selection == "siblings" else ["decoder_cos"])
    if not pairs:
        raise ValueError(f"no pairs selected ({selection}); see `atlas saes`")
    if widths:
        _match_widths(atlas, pairs, tau)
        return
    from ingest.executors import make_executor

    params = MatchParams(k=k, floor=floor, tau=0.7 if tau is None else tau, solver=solver)
    ex = make_executor(executor, address)
    try:
        with _bar(len(pairs) * len(methods), "match") as bar:
            summary = run_match(atlas, pairs, methods, params, publish_every, progress=lambda *_: bar.update(),
                                executor=ex)
    finally:
        ex.close()
    click.echo(f"matched {len(summary.computed)} pair-methods, skipped {len(summary.skipped)} already done "
               f"({summary.seconds:.1f} s)")
    if summary.results:
        click.echo(summary.report())


def _match_widths(atlas, pairs, tau):
    from ingest.jobs.widths import run_widths

    from .match.widths import WidthParams

    params = WidthParams() if tau is None else WidthParams(tau=tau)
    with _bar(len(pairs), "widths") as bar:
        s = run_widths(atlas, pairs, params, progress=lambda *_: bar.update())
    click.echo(f"matched {len(s.computed)} width pairs, skipped {len(s.skipped)} already done ({s.seconds:.1f} s); "
               f"narrow features: " + ", ".join(f"{n} {c}" for c, n in sorted(s.classes.items())))


@main.command()
@click.option("--full", is_flag=True, help="3 seeds and a code sibling on every layer, 4.2M samples each (about 1 h).")
@click.option("--cache", type=click.Path(path_type=Path), default=Path(".cache/minilm"), show_default=True,
              help="Activations and trained SAEs are kept here, keyed by their configuration.")
@click.option("--samples", type=int, default=None, help="Training samples per SAE [default: 4.2M, or 2M without --full].")
@click.option("--max-tokens", type=int, default=300_000, show_default=True, help="Tokens per corpus.")
@click.option("--d-sae", type=int, default=768, show_default=True, help="Features per SAE.")
@click.option("--widths", default="384,1536", show_default=True,
              help="Other dictionary sizes of --width-layer (feature splitting across widths); '' for none.")
@click.option("--width-layer", type=int, default=3, show_default=True, help="The layer trained at --widths.")
@click.pass_context
def minilm(ctx, full, cache, samples, max_tokens, d_sae, widths, width_layer):
    """Build the real family: MiniLM activations on prose and Python source, SAEs per layer x seed x
    dataset (sae_lens trainer), matched by weights and activations. Offline; cached for reruns."""
    from dataclasses import replace

    from ingest.jobs.family import FamilyPlan, build_family

    plan = FamilyPlan.full() if full else FamilyPlan()
    train = replace(plan.train, d_sae=d_sae, samples=samples or (plan.train.samples if full else 2_000_000))
    try:
        sizes = [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--widths takes sizes separated by commas, got {widths!r}") from None
    plan = replace(plan, max_tokens=max_tokens, train=train, widths=sizes, width_layer=width_layer)
    build_family(_atlas(ctx), plan, cache, log=click.echo)
    click.echo(f"MiniLM family ready in {_atlas(ctx).path}")


@main.command()
@click.option("--activations", type=click.Path(exists=True, path_type=Path), required=True,
              help="Folder of activation shards (written by the minilm job or ingest.activations.collect).")
@click.option("--pairs", "selection", type=click.Choice(["adjacent", "siblings", "list"]), default="adjacent",
              show_default=True)
@click.option("--stack", default=None, help="Only pairs in (or, for siblings, touching) this stack.")
@click.option("--pair", "explicit", multiple=True, help="SAE_A:SAE_B, repeatable.")
@click.option("--max-tokens", type=int, default=None, help="Use only the first N stored tokens.")
@click.option("--executor", type=click.Choice(["in-process", "ray"]), default="in-process", show_default=True)
@click.option("--address", default=None, help="Ray cluster address [default: start a local one].")
@click.pass_context
def correlate(ctx, activations, selection, stack, explicit, max_tokens, executor, address):
    """Activation correlation of SAE pairs over stored activations: correlations, activation_corr
    matches, compositions (AND/OR/PASS), examples, and SAE Match's checks of the weight matches."""
    from ingest.executors import make_executor
    from ingest.jobs.correlate import correlate as run
    from ingest.jobs.match import select_pairs

    atlas = _atlas(ctx)
    pairs_given = [tuple(p.split(":", 1)) for p in explicit]
    with atlas.read() as con:
        pairs = select_pairs(con, "list" if explicit else selection, 1, stack, pairs_given)
    if not pairs:
        raise ValueError(f"no pairs selected ({selection}); see `atlas saes`")
    ex = make_executor(executor, address)
    try:
        with _bar(len(pairs), "correlate") as bar:
            s = run(atlas, pairs, activations, progress=lambda *_: bar.update(), max_tokens=max_tokens, executor=ex)
    finally:
        ex.close()
    click.echo(f"correlated {len(s.pairs)} pairs in {s.seconds:.1f} s; compositions {sum(s.compositions.values())}")


@main.command("findings")
@click.option("--model", default="%", help="SQL LIKE pattern of the model(s) to report on.")
@click.option("--stack", default="%", help="SQL LIKE pattern of the stack(s) for the distance table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--lineage-of", "lineage_of", default=None,
              help="Also measure lineage size over this SAE's first --features features, every candidate vs carry/split/merge.")
@click.option("--features", "n_features", type=int, default=256, show_default=True)
@click.pass_context
def findings_cmd(ctx, model, stack, as_json, lineage_of, n_features):
    """The field's findings measured on this atlas: distance, seeds vs datasets, method agreement, AND/OR,
    seed consistency (PW-MCC), feature splitting across widths."""
    import json

    from .queries.findings import findings
    from .queries.lineage import lineage_shape

    with _atlas(ctx).read() as con:
        f = findings(con, model, stack)
        if lineage_of:
            f["lineage_shape"] = lineage_shape(con, lineage_of, n_features)
    if as_json:
        click.echo(json.dumps(f, indent=1, default=str))
        return
    click.echo("matched fraction (decoder_cos, tau 0.7) by layer distance:")
    for r in f["distance"]:
        ev = "" if r["explained_variance"] is None else f", explained variance {r['explained_variance']:.3f}"
        click.echo(f"  distance {r['distance']}: {r['matched_frac']:.3f} over {r['pairs']} pairs, "
                   f"MSE after permutation {r['mse_after_perm']:.2e}{ev}")
    click.echo("siblings (same layer):")
    for r in f["siblings"]:
        click.echo(f"  {r['relation']:>7}: decoder matched {r['decoder_matched_frac']:.3f}, shared (dec+enc) "
                   f"{r['shared_frac']:.3f} over {r['pairs']} pairs")
    if f["agreement"]:
        same = sum(r["same_partner"] * r["both_assigned"] for r in f["agreement"]) / sum(r["both_assigned"] for r in f["agreement"])
        click.echo(f"decoder_cos vs activation_corr: same partner for {same:.3f} of features assigned by both "
                   f"({len(f['agreement'])} pairs)")
    if f["consistency"]:
        click.echo("consistency (PW-MCC: mean best |cosine| in the other SAE, both ways; random baseline):")
        for r in f["consistency"]:
            click.echo(f"  layer {r['layer']} {r['relation']:>7}: {r['pw_mcc']:.3f} (random {r['pw_mcc_random']:.3f})"
                       f"  {r['sae_a']} ~ {r['sae_b']}")
    if f["widths"]:
        click.echo("across widths (narrow features kept / split / absent in the next wider SAE):")
        for r in f["widths"]:
            combo = "" if r["mean_split_combo_cos"] is None else (
                f", splits into {r['mean_split_children']:.1f} on average (combination cosine {r['mean_split_combo_cos']:.2f})")
            click.echo(f"  layer {r['layer']} {r['d_a']} -> {r['d_b']}: {r['kept']} kept, {r['split']} split, "
                       f"{r['absent']} absent{combo}")
    for mode, r in f.get("lineage_shape", {}).items():
        click.echo(f"lineages of {lineage_of} (first {r['features']} features), edges={mode}: "
                   f"{r['over_big']:.1%} exceed 20 nodes (mean {r['mean_nodes']:.1f}, max {r['max_nodes']}); "
                   f"{r['unassigned_edges']:.1%} of {r['edges']} edges are not in the assignment")
    click.echo(f"compositions: {f['composition_counts']}")
    for c in f["compositions"]:
        click.echo(f"  {c['kind']} {c['sae_a']}{c['parents']} -> {c['sae_b']}/{c['feature_b']} (Jaccard {c['score']:.2f})")
        for line in c["child_context"]:
            click.echo(f"      child:  {line}")
        for p, lines in c["parent_contexts"].items():
            for line in lines:
                click.echo(f"      parent {p}: {line}")


@main.group()
def labels():
    """Feature labels and stats from Neuronpedia exports."""


@labels.command("import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--sae", "sae_id", default=None, help="Store into this SAE instead of the one with the rows' neuronpedia id.")
@click.option("--explainer", default=None,
              help="Take labels by this explainer (explanationModelName, or the <explainer> of explanations-<explainer>/) "
                   "[default: per SAE, the one labelling most features].")
@click.pass_context
def labels_import(ctx, path, sae_id, explainer):
    """Import a Neuronpedia export: v1/<model>/<source>/{explanations,features,activations}/*.jsonl[.gz],
    one of those folders alone, explanations-<explainer>/ folders, or the explanation export API's JSON array.
    Rows go to the SAE whose neuronpedia id is their modelId/layer."""
    from ingest.jobs.labels import import_labels

    s = import_labels(_atlas(ctx), path, sae_id, explainer)
    for sid, n in s.labels.items():
        click.echo(f"{sid}: {n} features labelled (explainer {s.explainers[sid]})")
    for sid, n in s.stats.items():
        click.echo(f"{sid}: stats for {n} features")
    for sid, n in s.examples.items():
        click.echo(f"{sid}: {n} top-activation examples")
    click.echo(f"imported {s.files} files: {sum(s.labels.values())} features labelled")


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
@click.option("--tau", type=click.FloatRange(-1, 1), default=0.7, show_default=True)
@click.option("--method", default="decoder_cos", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON instead of its URL.")
@click.pass_context
def neuronpedia_lineage(ctx, sae, feature, tau, method, as_json):
    """The lineage of FEATURE of SAE across layers."""
    from .queries.neuronpedia import lineage_list

    with _atlas(ctx).read() as con:
        _print_list(lineage_list(con, sae, feature, tau, method), as_json)


@neuronpedia.command("orphans")
@click.argument("sae")
@click.option("--tau", type=click.FloatRange(-1, 1), default=0.7, show_default=True)
@click.option("--by", type=click.Choice(["any", "seed", "dataset"]), default="any", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON instead of its URL.")
@click.pass_context
def neuronpedia_orphans(ctx, sae, tau, by, as_json):
    """The orphan features of SAE (shared with none of its matched siblings)."""
    from .queries.neuronpedia import orphans_list

    with _atlas(ctx).read() as con:
        _print_list(orphans_list(con, sae, tau, by), as_json)


@neuronpedia.command("pair")
@click.argument("sae_a")
@click.argument("sae_b")
@click.option("--tau", type=float, default=0.7, show_default=True)
@click.option("--method", default="decoder_cos", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON instead of its URL.")
@click.pass_context
def neuronpedia_pair(ctx, sae_a, sae_b, tau, method, as_json):
    """The matches of a layer (or sibling) pair, both sides, best first."""
    from .queries.neuronpedia import pair_list

    with _atlas(ctx).read() as con:
        _print_list(pair_list(con, sae_a, sae_b, method, tau), as_json)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes (each reads the atlas).")
@click.option("--cors", "cors", multiple=True, help="Allow browser calls from this origin (repeatable; '*' for any).")
@click.option("--sql-time-limit", type=float, default=None, help="Seconds before user SQL is interrupted [default: 5].")
@click.option("--sql-max-rows", type=int, default=None, help="Most rows /api/sql returns [default: 1000].")
@click.option("--threads", type=int, default=None, help="DuckDB threads per worker [default: 2].")
@click.pass_context
def serve(ctx, host, port, workers, cors, sql_time_limit, sql_max_rows, threads):
    """Serve the atlas over HTTP: JSON API under /api, OpenAPI docs at /schema.

    Jobs may run meanwhile: the server keeps its snapshot and switches to a new one when a job publishes.
    """
    import json
    import os

    import uvicorn

    atlas = _atlas(ctx)
    if not atlas.exists():
        raise FileNotFoundError(f"no atlas at {atlas.path}: run `make demo` or `atlas synth` first")
    settings = {k: v for k, v in {"cors_origins": list(cors), "sql_time_limit_s": sql_time_limit,
                                  "sql_max_rows": sql_max_rows, "threads": threads}.items() if v}
    os.environ["ATLAS_PATH"] = str(atlas.path.resolve())
    os.environ["ATLAS_SETTINGS"] = json.dumps(settings)
    click.echo(f"serving {atlas.path} at http://{host}:{port}/ (API under /api, docs at /schema)")
    if workers == 1:
        uvicorn.run("api.app:app_from_env", factory=True, host=host, port=port, log_level="warning")
        return
    import socket

    from uvicorn.supervisors import Multiprocess

    # uvicorn binds its worker socket with protocol 0, so asyncio never sets TCP_NODELAY on accepted
    # connections and every keep-alive response waits ~40 ms (Nagle + delayed ACK). Bind it ourselves.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config("api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                            log_level="warning")
    Multiprocess(config, sockets=[sock]).run()


if __name__ == "__main__":
    main()
