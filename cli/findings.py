"""atlas findings: the field's findings measured on this atlas, as tables or JSON."""

from __future__ import annotations

import click

from .group import main


def num(x, template: str, none: str = "n/a") -> str:
    """`template` filled with x, or `none` where x is missing."""
    return none if x is None else template.format(x)


def section(title: str, rows: list[dict], line, always: bool = False) -> None:
    """The title, then line(row) indented per row; nothing where there are no rows, unless `always`."""
    if rows or always:
        click.echo(title)
        for r in rows:
            click.echo("  " + line(r))


@main.command("findings")
@click.option("--model", default="%", help="SQL LIKE pattern of the model(s) to report on.")
@click.option("--stack", default="%", help="SQL LIKE pattern of the stack(s) for the distance table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--lineage-of", "lineage_of", default=None,
              help="Also measure lineage size over this SAE's first --features features, every candidate vs carry/split/merge.")
@click.option("--features", "n_features", type=int, default=256, show_default=True)
@click.pass_obj
def findings_cmd(atlas, model, stack, as_json, lineage_of, n_features):
    """The field's findings measured on this atlas, one block per model: distance, seeds vs datasets, method
    agreement, AND/OR, seed consistency (PW-MCC and MMCS), feature splitting across widths, ablation checks, and
    the same-index share of each pair kind (how much a shared initialisation shows)."""
    import json

    from atlas.queries.findings import findings, models
    from atlas.queries.lineage import lineage_shape

    with atlas.read() as con:
        if as_json:
            f = findings(con, model, stack)
        else:  # one block per model: an atlas with the planted family and MiniLM never mixes their pairs
            f = {m: findings(con, m, stack) for m in models(con, model)}
        shape = lineage_shape(con, lineage_of, n_features) if lineage_of else None
    if as_json:
        if shape:
            f["lineage_shape"] = shape
        click.echo(json.dumps(f, indent=1, default=str))
        return
    if not f:
        click.echo(f"no SAEs of a model matching {model!r} in {atlas.path}")
    for i, (m, block) in enumerate(f.items()):
        click.echo(("\n" if i else "") + f"== {m} ==")
        _print(block)
    for mode, r in (shape or {}).items():
        click.echo(f"lineages of {lineage_of} (first {r['features']} features), edges={mode}: "
                   f"{r['over_big']:.1%} exceed 20 nodes (mean {r['mean_nodes']:.1f}, max {r['max_nodes']}); "
                   f"{r['unassigned_edges']:.1%} of {r['edges']} edges are not in the assignment")


def _same_index(r: dict) -> str:
    kind = f"{r['kind']} (distance {r['distance']})" if r["distance"] is not None else r["kind"]
    flag = "  <- far above chance: shared initialisation?" if r["same_index"] > max(0.05, 10 * r["chance"]) else ""
    return (f"{kind:>28}: {r['same_index']:.1%} of {r['assigned']:,} assigned over {r['pairs']} pairs "
            f"(chance {r['chance']:.2%}){flag}")


def _print(f: dict) -> None:
    """One model's findings as text."""
    section("matched fraction (decoder_cos, tau 0.7) by layer distance:", f["distance"], lambda r: (
        f"distance {r['distance']}: {r['matched_frac']:.3f} over {r['pairs']} pairs, MSE after permutation "
        f"{r['mse_after_perm']:.2e}" + num(r["explained_variance"], ", explained variance {:.3f}", "")), always=True)
    section("siblings (same layer):", f["siblings"], lambda r: (
        f"{r['relation']:>16}: decoder matched {r['decoder_matched_frac']:.3f}, shared (dec+enc) {r['shared_frac']:.3f} "
        f"over {r['pairs']} pairs"), always=True)
    if f["agreement"]:
        same = sum(r["same_partner"] * r["both_assigned"] for r in f["agreement"]) / sum(r["both_assigned"] for r in f["agreement"])
        click.echo(f"decoder_cos vs activation_corr: same partner for {same:.3f} of features assigned by both "
                   f"({len(f['agreement'])} pairs)")
    section("consistency, each against random decoders of the same shape: PW-MCC (mean cosine of one one-to-one "
            "assignment of all features) and MMCS (mean best |cosine| in the other SAE, both ways):", f["consistency"],
            lambda r: (f"layer {r['layer']} {r['relation']:>16}: PW-MCC " + (
                "not computed (rerun `atlas match`)" if r["pw_mcc"] is None else
                f"{r['pw_mcc']:.3f} (random {r['pw_mcc_random']:.3f})") +
                f", MMCS {r['mmcs']:.3f} (random {r['mmcs_random']:.3f})  {r['sae_a']} ~ {r['sae_b']}"))
    section("across widths (narrow features kept / split / duplicate / absent in the next wider SAE):", f["widths"],
            lambda r: (f"layer {r['layer']} {r['d_a']} -> {r['d_b']}: {r['kept']} kept, {r['split']} split, "
                       f"{r['duplicate']} duplicate, {r['absent']} absent" + ("" if r["mean_split_combo_cos"] is None else
                       f", splits into {r['mean_split_children']:.1f} on average (combination cosine "
                       f"{r['mean_split_combo_cos']:.2f})")))
    section("edges that hold under ablation (child drops beyond the 95th percentile of its pair's random pairs):",
            f["ablation"], lambda r: (f"distance {r['distance']} {r['kind']:>6}: {num(r['held_frac'], '{:.1%}')} of "
                                      f"{r['tested']} tested (median drop {num(r['median_drop'], '{:.3f}')}; "
                                      f"{r['pairs']} pairs)"))
    section("feature-flow origins of residual features (by weights = decoder_cos | by activations = Pearson r):",
            f["flow"], lambda r: (f"layer {r['layer']} {r['sae_id']}: weights {r['weights']} | activations "
                                  f"{r['activations']}" + num(r["agree"], "; same class for {:.1%}", "")))
    section("same index (assigned decoder_cos pairs whose two features have the same index; a family trained from "
            "one shared initialisation shows it here, far above chance = 1 / the larger width):", f["same_index"],
            _same_index)
    click.echo(f"compositions: {f['composition_counts']}")
    for c in f["compositions"]:
        click.echo(f"  {c['kind']} {c['sae_a']}{c['parents']} -> {c['sae_b']}/{c['feature_b']} (Jaccard {c['score']:.2f})")
        for line in c["child_context"]:
            click.echo(f"      child:  {line}")
        for p, lines in c["parent_contexts"].items():
            for line in lines:
                click.echo(f"      parent {p}: {line}")
