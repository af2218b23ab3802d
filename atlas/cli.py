"""The `atlas` command line: init, synth, ingest, saes, info, match, minilm, demo, serve.

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
    from ingest.jobs.ingest import check_table_files

    check_table_files(atlas)  # one line for a DuckDB file copied without its .files/ folder
    before = atlas.path.stat().st_size
    with atlas.write() as w:
        version = w.upgraded_from
        indexed = w.build_edge_indexes()
        n, size = w.con.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM parts").fetchone()
        stale = w.con.execute("SELECT count(*) FROM pair_stats WHERE starts_with(params_hash, 'stale-')").fetchone()[0]
    if version == SCHEMA_VERSION:
        click.echo(f"{atlas.path} is already at schema version {SCHEMA_VERSION}; its views name its {n} table files "
                   f"in {atlas.tables_dir}" + (f"; wrote {indexed} missing edge indexes" if indexed else ""))
    else:
        click.echo(f"migrated {atlas.path} from schema version {version} to {SCHEMA_VERSION}: {n} table files "
                   f"({size / 1e6:,.1f} MB) in {atlas.tables_dir}; DuckDB file {before / 1e6:,.1f} MB -> "
                   f"{atlas.path.stat().st_size / 1e6:,.1f} MB")
    if stale:  # schema 6: what was stored as pw_mcc is MMCS; PW-MCC needs the weights
        click.echo(f"{stale} decoder_cos pairs keep their old consistency value as mmcs; `atlas match` with the same "
                   f"--pairs recomputes them with PW-MCC (and `atlas match --pairs widths` adds the duplicate class)")


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
@click.option("--full", is_flag=True, help="Every layer, 2 seed and 1 dataset siblings each, 4.2M samples (about 1 h).")
@click.option("--cache", type=click.Path(path_type=Path), default=Path(".cache/minilm"), show_default=True,
              help="Activations and trained SAEs are kept here, keyed by their configuration.")
@click.option("--samples", type=int, default=None, help="Training samples per SAE [default: 800k, or 4.2M with --full].")
@click.option("--max-tokens", type=int, default=None, help="Tokens per corpus [default: 200k, or 300k with --full].")
@click.option("--d-sae", type=int, default=None, help="Features per SAE [default: 768].")
@click.option("--widths", default=None,
              help="Other dictionary sizes of --width-layer (feature splitting across widths); '' for none [default: 384,1536].")
@click.option("--width-layer", type=int, default=None, help="The layer trained at --widths [default: 3].")
@click.option("--flow-layers", default=None,
              help="Layers that also get an MLP-out and an attention-out SAE (feature-flow origins); '' for none "
                   "[default: 3, or 2,4 with --full].")
@click.pass_context
def minilm(ctx, full, cache, samples, max_tokens, d_sae, widths, width_layer, flow_layers):
    """Build the real family: MiniLM activations on prose and Python source, SAEs per layer x seed x
    dataset (sae_lens trainer), matched by weights and activations. Offline; cached for reruns. Progress
    is written beside the atlas, so a running `atlas serve` shows it on its home page."""
    from dataclasses import replace

    from ingest.jobs.family import STEPS, FamilyPlan, build_family

    from .status import StatusWriter

    plan = FamilyPlan.full() if full else FamilyPlan()
    train = replace(plan.train, d_sae=d_sae or plan.train.d_sae, samples=samples or plan.train.samples)
    try:
        sizes = plan.widths if widths is None else [int(w) for w in widths.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--widths takes sizes separated by commas, got {widths!r}") from None
    try:
        flow = plan.flow_layers if flow_layers is None else [int(x) for x in flow_layers.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--flow-layers takes layers separated by commas, got {flow_layers!r}") from None
    plan = replace(plan, max_tokens=max_tokens or plan.max_tokens, train=train, widths=sizes, flow_layers=flow,
                   width_layer=plan.width_layer if width_layer is None else width_layer)
    status = StatusWriter(_atlas(ctx).path, [f"MiniLM {s}" for s in STEPS])
    try:
        build_family(_atlas(ctx), plan, cache, log=click.echo,
                     progress=lambda step, done, total, item: status.update(f"MiniLM {step}", done, total, item))
    except BaseException as e:
        stopped = isinstance(e, KeyboardInterrupt)
        status.finish("stopped" if stopped else "failed",
                      "stopped by Ctrl-C; a rerun resumes from the cache" if stopped else " ".join(str(e).split())[:300])
        raise
    status.finish("done", "every step is built and served")
    click.echo(f"MiniLM family ready in {_atlas(ctx).path}")


@main.command()
@click.option("--activations", type=click.Path(exists=True, path_type=Path), default=None,
              help="Folder of activation shards keyed by hook (written by the minilm job or ingest.activations.collect).")
@click.option("--model", "live_model", default=None,
              help="Instead of --activations: run this model (all-MiniLM-L6-v2, an HF path) over --corpus and "
                   "correlate in one pass, writing no activations.")
@click.option("--corpus", default="prose", show_default=True, help="Corpus for --model (prose, code).")
@click.option("--pairs", "selection", type=click.Choice(["adjacent", "siblings", "flow", "list"]), default="adjacent",
              show_default=True, help="flow: MLP/attention-out SAEs and transcoders with the residual SAE of their layer.")
@click.option("--stack", default=None, help="Only pairs in (or, for siblings, touching) this stack.")
@click.option("--pair", "explicit", multiple=True, help="SAE_A:SAE_B, repeatable.")
@click.option("--max-tokens", type=int, default=None, help="Use only the first N tokens [--model: 100,000].")
@click.option("--one-pass", is_flag=True, help="All pairs in one pass over the tokens, each SAE encoded once per batch.")
@click.option("--executor", type=click.Choice(["in-process", "ray"]), default="in-process", show_default=True)
@click.option("--address", default=None, help="Ray cluster address [default: start a local one].")
@click.pass_context
def correlate(ctx, activations, live_model, corpus, selection, stack, explicit, max_tokens, one_pass, executor, address):
    """Activation correlation of SAE pairs, each SAE encoded on its own hook: correlations, activation_corr
    matches, compositions (AND/OR/PASS), examples, and SAE Match's checks of the weight matches."""
    from ingest.activations import ActivationConfig
    from ingest.executors import make_executor
    from ingest.jobs.correlate import correlate as run
    from ingest.jobs.match import select_pairs

    if (activations is None) == (live_model is None):
        raise ValueError("give either --activations FOLDER or --model NAME (a live run)")
    source = activations if live_model is None else ActivationConfig(model=live_model, corpus=corpus,
                                                                     max_tokens=max_tokens or 100_000)
    atlas = _atlas(ctx)
    pairs_given = [tuple(p.split(":", 1)) for p in explicit]
    with atlas.read() as con:
        pairs = select_pairs(con, "list" if explicit else selection, 1, stack, pairs_given)
    if not pairs:
        raise ValueError(f"no pairs selected ({selection}); see `atlas saes`")
    ex = make_executor(executor, address)
    try:
        with _bar(len(pairs), "correlate") as bar:
            s = run(atlas, pairs, source, progress=lambda *_: bar.update(), max_tokens=max_tokens, executor=ex,
                    one_pass=one_pass)
    finally:
        ex.close()
    click.echo(f"correlated {len(s.pairs)} pairs in {s.seconds:.1f} s; compositions {sum(s.compositions.values())}")


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
@click.pass_context
def check_edges_cmd(ctx, stack, method, tau, per_kind, n_random, max_step, model, corpus, skip_tokens, n_windows,
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
    from tqdm import tqdm

    from ingest.ablation import heldout_windows, load_model
    from ingest.hooks import HookedRunner
    from ingest.jobs.check_edges import CheckParams, check_edges, stack_pairs

    from .queries.checks import pair_checks

    atlas = _atlas(ctx)
    params = CheckParams(method=method, tau=tau, per_kind=per_kind, random=n_random, max_step=max_step,
                         max_windows=max_windows, seed=seed)
    with atlas.read() as con:
        pairs = stack_pairs(con, method, max_step, stack)
        models = sorted({r[0] for r in con.execute("SELECT DISTINCT model FROM saes WHERE sae_id IN (SELECT unnest(?))",
                                                   [[a for a, _, _ in pairs]]).fetchall()})
    if not pairs:
        raise ValueError(f"no matched stack pairs of {method}{f' in stack {stack}' if stack else ''}: run `atlas match`")
    if model is None and len(models) > 1:
        raise ValueError(f"the pairs are of several models ({', '.join(models)}): pick one stack with --stack")
    model = model or models[0]
    runner = HookedRunner(load_model(model))
    windows = heldout_windows(model, corpus, skip_tokens, n_windows)
    with tqdm(desc="check-edges", unit="ablation", disable=None, dynamic_ncols=True) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)
        s = check_edges(atlas, runner, windows, pairs, params, stack, progress=progress)
    click.echo(f"checked {s.checks} edges and controls of {len(s.pairs)} pairs with {s.ablations} ablations "
               f"on {len(windows)} held-out windows ({s.seconds:.1f} s)")
    with atlas.read() as con:
        for r in pair_checks(con, method, stack):
            held = "n/a" if r["held_frac"] is None else f"{r['held_frac']:.0%}"
            med = "n/a" if r["median_drop"] is None else f"{r['median_drop']:.3f}"
            click.echo(f"  {r['sae_a']} -> {r['sae_b']} {r['kind']:>6}: {r['tested']}/{r['n']} tested, "
                       f"{held} hold, median drop {med}")


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
    seed consistency (PW-MCC and MMCS), feature splitting across widths."""
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
        click.echo("consistency, each against random decoders of the same shape: PW-MCC (mean cosine of one one-to-one "
                   "assignment of all features) and MMCS (mean best |cosine| in the other SAE, both ways):")
        for r in f["consistency"]:
            pw = ("not computed (rerun `atlas match`)" if r["pw_mcc"] is None else
                  f"{r['pw_mcc']:.3f} (random {r['pw_mcc_random']:.3f})")
            click.echo(f"  layer {r['layer']} {r['relation']:>7}: PW-MCC {pw}, MMCS {r['mmcs']:.3f} "
                       f"(random {r['mmcs_random']:.3f})  {r['sae_a']} ~ {r['sae_b']}")
    if f["widths"]:
        click.echo("across widths (narrow features kept / split / duplicate / absent in the next wider SAE):")
        for r in f["widths"]:
            combo = "" if r["mean_split_combo_cos"] is None else (
                f", splits into {r['mean_split_children']:.1f} on average (combination cosine {r['mean_split_combo_cos']:.2f})")
            click.echo(f"  layer {r['layer']} {r['d_a']} -> {r['d_b']}: {r['kept']} kept, {r['split']} split, "
                       f"{r['duplicate']} duplicate, {r['absent']} absent{combo}")
    if f["ablation"]:
        click.echo("edges that hold under ablation (child drops beyond the 95th percentile of its pair's random pairs):")
        for r in f["ablation"]:
            held = "n/a" if r["held_frac"] is None else f"{r['held_frac']:.1%}"
            med = "n/a" if r["median_drop"] is None else f"{r['median_drop']:.3f}"
            click.echo(f"  distance {r['distance']} {r['kind']:>6}: {held} of {r['tested']} tested "
                       f"(median drop {med}; {r['pairs']} pairs)")
    if f["flow"]:
        click.echo("feature-flow origins of residual features (by weights = decoder_cos | by activations = Pearson r):")
        for r in f["flow"]:
            agree = "" if r["agree"] is None else f"; same class for {r['agree']:.1%}"
            click.echo(f"  layer {r['layer']} {r['sae_id']}: weights {r['weights']} | activations {r['activations']}{agree}")
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


@main.command("steering")
@click.argument("sae")
@click.argument("feature", type=click.IntRange(min=0))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the set as a safetensors file (tensors directions [n, d_in], norms, layers, features; "
                   "metadata hooks, sae_ids) instead of printing JSON.")
@click.option("--tau", type=click.FloatRange(-1, 1), default=0.7, show_default=True)
@click.option("--method", default="decoder_cos", show_default=True)
@click.option("--compare", is_flag=True, help="Steer the model on held-out text with the whole set and with its first "
              "direction alone; print each chain feature's mean activation (clean, first only, whole set).")
@click.option("--alpha", type=float, default=8.0, show_default=True, help="--compare: added length of each unit direction.")
@click.option("--windows", "n_windows", type=click.IntRange(min=1), default=16, show_default=True,
              help="--compare: held-out prose windows (after the first 300,000 tokens).")
@click.pass_context
def steering_cmd(ctx, sae, feature, out, tau, method, compare, alpha, n_windows):
    """The steering set of FEATURE of SAE: the decoder directions (with norms, hooks, layers, feature ids) of
    its carry chain across the stack, as JSON or (--out) a safetensors file a steering tool loads."""
    import msgspec

    from .queries.search import IndexCache
    from .queries.steering import steering_set, to_safetensors

    atlas = _atlas(ctx)
    with atlas.read() as con:
        s = steering_set(con, IndexCache(atlas.index_dir), sae, feature, tau=tau, method=method)
        sources = {r[0]: r[1:] for r in con.execute("SELECT sae_id, source, format, layer FROM saes").fetchall()}
    if compare:
        from ingest.ablation import heldout_windows, load_model, steering_rise
        from ingest.hooks import HookedRunner
        from ingest.sources import read_sae

        saes = {v.sae_id: read_sae(sources[v.sae_id][0], fmt=sources[v.sae_id][1], sae_id=v.sae_id,
                                   layer=sources[v.sae_id][2]) for v in s.vectors}
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
    # GET /api/sql takes 100,000 characters, up to 1.2 MB percent-encoded: past h11's 16 KiB default a request
    # line would be uvicorn's own text/plain 400, outside the error envelope
    line = {"h11_max_incomplete_event_size": 2 * 2**20}
    if workers == 1:
        uvicorn.run("api.app:app_from_env", factory=True, host=host, port=port, log_level="warning", **line)
        return
    import socket

    from uvicorn.supervisors import Multiprocess

    # uvicorn binds its worker socket with protocol 0, so asyncio never sets TCP_NODELAY on accepted
    # connections and every keep-alive response waits ~40 ms (Nagle + delayed ACK). Bind it ourselves.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config("api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                            log_level="warning", **line)
    Multiprocess(config, sockets=[sock]).run()


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path("demo-data"), show_default=True,
              help="The planted family, MiniLM activations and trained SAEs are kept here: a rerun resumes.")
@click.option("--size", type=click.Choice(["default", "full", "tiny"]), default="default", show_default=True,
              help="default: the MiniLM family in <= 10 min on 2 idle cores; full: as `atlas minilm --full` "
                   "(about 1 h); tiny: seconds, to try the command itself.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.pass_context
def demo(ctx, cache, size, host, port):
    """Serve at once, build beside the server: the planted-truth family (seconds), then `atlas serve`, then
    the real MiniLM family, each SAE and pair served as it lands (the home page shows what is still
    coming). Ctrl-C stops both; a rerun resumes from --cache."""
    from ingest.jobs.demo import run_demo

    try:
        run_demo(_atlas(ctx), cache, size, host, port, log=click.echo)
    except KeyboardInterrupt:
        click.echo(f"stopped; `atlas demo` (or `make demo`) again resumes from {cache}", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
