"""atlas steering: the decoder directions of a feature's carry chain, to steer a model with."""

from __future__ import annotations

from pathlib import Path

import click

from .group import main


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
@click.pass_obj
def steering_cmd(atlas, sae, feature, out, tau, method, compare, alpha, n_windows):
    """The steering set of FEATURE of SAE: the decoder directions (with norms, hooks, layers, feature ids) of
    its carry chain across the stack, as JSON or (--out) a safetensors file a steering tool loads."""
    import msgspec

    from atlas.queries.common import sae_row
    from atlas.queries.search import IndexCache
    from atlas.queries.steering import steering_set, to_safetensors

    with atlas.read() as con:
        s = steering_set(con, IndexCache(atlas.index_dir), sae, feature, tau=tau, method=method)
        rows = {v.sae_id: sae_row(con, v.sae_id) for v in s.vectors}
    if compare:
        from ingest.ablation import heldout_windows, load_model, steering_rise
        from ingest.hooks import HookedRunner
        from ingest.sources import read_sae

        saes = {i: read_sae(r["source"], fmt=r["format"], sae_id=i, layer=r["layer"]) for i, r in rows.items()}
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
