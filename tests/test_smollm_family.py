"""The decoder LM family (`atlas smollm`; docs/design.md, Training a family): its plan names every SAE by its
TransformerLens hook, and the one builder runs it end to end on a tiny random Llama (tests/tiny_lms.py) in place of
SmolLM2 — activations at the plan's hooks equal TransformerLens's own cache, each SAE is trained, ingested at its
site, matched by weights where its decoder lives in the residual stream and by activations everywhere."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.store import Atlas
from atlas_ingest.jobs.family import SMOLLM, FamilyPlan, build_family
from atlas_ingest.training import TrainConfig
from tests.tiny_lms import hub, hooked_transformer  # noqa: F401  (hub: the offline HF cache fixture)

LLAMA = "meta-llama/Llama-3.2-1B"


def _hooks(plan: FamilyPlan) -> dict[tuple, str]:
    """(dataset, seed, d_sae, hook) of every SAE the plan trains."""
    d = plan.train.d_sae
    out = [(ds, s, d, f"blocks.{layer}.hook_resid_post") for ds, s, layer in plan.saes()]
    out += [(ds, s, w, f"blocks.{layer}.hook_resid_post") for ds, s, layer, w in plan.width_saes()]
    out += [(ds, s, d, hook) for ds, s, _, hook in plan.flow_saes()]
    out += [(ds, s, d, hook) for ds, s, _, hook, _ in plan.transcoders()]
    return out


def test_smollm_plan_has_the_listed_saes_at_transformer_lens_hooks():
    plan = FamilyPlan.smollm()
    assert plan.model == SMOLLM and plan.train.b_dec_init == "mean"
    saes = _hooks(plan)
    base = sorted(int(re.match(r"blocks\.(\d+)\.", h)[1]) for ds, s, d, h in saes
                  if (ds, s, d) == ("prose", 0, plan.train.d_sae) and h.endswith("hook_resid_post"))
    assert len(base) >= 4 and base == list(range(base[0], base[0] + len(base)))  # consecutive layers
    flow = plan.flow_layers[0]
    assert flow in base
    mine = {(ds, s, d, h) for ds, s, d, h in saes if h.startswith(f"blocks.{flow}.")}
    d = plan.train.d_sae
    assert {("prose", 0, d, f"blocks.{flow}.hook_mlp_out"), ("prose", 0, d, f"blocks.{flow}.attn.hook_z"),
            ("prose", 1, d, f"blocks.{flow}.hook_resid_post"), ("code", 0, d, f"blocks.{flow}.hook_resid_post")} <= mine
    assert any(w != d for _, _, w, h in mine if h.endswith("resid_post"))  # a width pair at the flow layer
    assert plan.transcoders() == [("prose", 0, flow, f"blocks.{flow}.ln2.hook_normalized", f"blocks.{flow}.hook_mlp_out")]
    assert len(saes) == len(set(saes))


def test_smollm_cli_refuses_bad_layers_in_one_line(tmp_path):
    from atlas_cli import main

    r = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "smollm", "--layers", "3,x"])
    assert r.exit_code == 2 and "--layers takes layers separated by commas, got '3,x'" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def tiny_family(hub, tmp_path_factory):
    """SmolLM2's plan on the tiny Llama (3 blocks, d_model 32): base stack 0-2, the layer-1 siblings, width and flow."""
    root = tmp_path_factory.mktemp("smollm")
    plan = replace(FamilyPlan.smollm(), model=LLAMA, layers=[0, 1, 2], sibling_layers=[1], code_layers=[1],
                   width_layer=1, widths=[32], flow_layers=[1], transcoder_layers=[1], max_tokens=2_400, corr_tokens=None,
                   train=TrainConfig(d_sae=64, samples=3_072, batch=256, eval_tokens=600, l1_coefficient=1.0,
                                     b_dec_init="mean"))
    atlas = Atlas(root / "a.duckdb")
    steps = []
    quality = build_family(atlas, plan, root / "cache", log=lambda *_: None, progress=lambda *a: steps.append(a))
    return plan, atlas, root / "cache", quality, steps


def test_family_hooks_read_the_tensors_transformer_lens_caches(tiny_family, hub):
    from atlas_ingest.activations import load_hook, load_tokens
    from atlas_ingest.models import load

    plan, _, cache, _, _ = tiny_family
    folder = cache / "activations" / f"prose-{plan.max_tokens}"
    tokens = load_tokens(folder)
    first = (tokens["doc"] == tokens["doc"][0]) & (tokens["pos"] < 126)  # the first window
    n = int(first.sum())
    assert np.all(np.flatnonzero(first) == np.arange(n))
    lm = load(LLAMA, device="cpu")
    ht = hooked_transformer("llama", lm.model if not hasattr(lm.model, "original_model") else lm.model.original_model)
    bos = lm.frame()[0]
    ids = torch.tensor([[*bos, *tokens["token_ids"][:n].tolist()]])
    _, ref = ht.run_with_cache(ids)
    hooks = sorted({h for *_, h in _hooks(plan)})
    assert {"blocks.1.attn.hook_z", "blocks.1.hook_mlp_out", "blocks.1.ln2.hook_normalized"} <= set(hooks)
    for hook in hooks:
        want = ref[hook][0, len(bos):].flatten(1).float()  # attn.hook_z: heads flattened, as sae_lens reads it
        got = load_hook(folder, hook)[:n].float()
        assert torch.allclose(got, want, atol=2e-2 * float(want.abs().max()), rtol=1e-2), hook  # stored as float16


def test_family_runs_end_to_end(tiny_family):
    plan, atlas, _, quality, steps = tiny_family
    assert len(quality) == len(_hooks(plan)) == 9  # base 3, seed, code, width, MLP-out, attn z, transcoder
    assert all(0 <= q["fvu"] < 1.5 and 0 < q["l0"] < plan.train.d_sae for q in quality.values()), quality
    with atlas.read() as con:
        rows = con.execute("SELECT sae_id, hook, site, layer, d_sae, seed, dataset FROM saes").fetchall()
        saes = {r[0]: r[1:] for r in rows}
        tc = con.execute("SELECT sae_id, hook, hook_out, site FROM saes WHERE kind = 'transcoder'").fetchall()
        stats = set(con.execute("SELECT sae_a, sae_b, method FROM pair_stats").fetchall())
        trained = con.execute("SELECT count(*) FROM training").fetchone()[0]
    assert sorted((h, s, ds, d) for h, _, _, d, s, ds in saes.values()) == sorted(
        (h, s, ds, d) for ds, s, d, h in _hooks(plan))
    assert trained == 9 and not any("None" in sid for sid in saes)
    assert [t[1:] for t in tc] == [("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", "mlp")]
    assert any(tc[0][0] in (a, b) and m == "decoder_cos" for a, b, m in stats)  # it writes the residual stream
    assert any(tc[0][0] in (a, b) and m == "activation_corr" for a, b, m in stats)
    site = {sid: v[1] for sid, v in saes.items()}
    assert {site[sid] for sid, v in saes.items() if v[0] == "blocks.1.attn.hook_z"} == {"attn"}
    methods = {}
    for a, b, m in stats:
        methods.setdefault(frozenset((site[a], site[b])), set()).add(m)
    # the MLP-out decoder lives in the residual stream: weights and activations; attn.hook_z's (per-head space) does not
    assert {"decoder_cos", "activation_corr"} <= methods[frozenset(("mlp", "resid"))]
    assert "activation_corr" in methods[frozenset(("attn", "resid"))]
    assert "decoder_cos" not in methods[frozenset(("attn", "resid"))]
    assert {s[0] for s in steps} == {"activations", "SAEs", "widths", "matches", "correlations"}


def test_smollm_layers_option_moves_the_middle_layers_saes_with_it():
    from atlas_cli.build import family_plan

    plan = family_plan(FamilyPlan.smollm(), layers="10,11,12,13")
    assert plan.layers == [10, 11, 12, 13] and plan.width_layer == 12
    assert plan.sibling_layers == plan.code_layers == plan.flow_layers == plan.transcoder_layers == [12]
    plan = family_plan(FamilyPlan.smollm(), layers="10,11,12,13", width_layer=11, flow_layers="")
    assert plan.width_layer == 11 and plan.sibling_layers == [11] and plan.flow_layers == []
    assert family_plan(FamilyPlan.smollm()) == FamilyPlan.smollm()  # no options: the plan itself
