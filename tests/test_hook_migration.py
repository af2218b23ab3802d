"""`atlas migrate` moves stored hooks to their TransformerLens names: MiniLM's layer outputs (stored as
hook_resid_post before) become hook_normalized_resid_post, module paths become the names atlas_ingest.hooks maps them
to, a stack that said "None" gets its site; SAE ids stay, so every link keeps working."""

from __future__ import annotations

import duckdb
from click.testing import CliRunner

from atlas_cli import main
from atlas_ingest.hooks import sae_hooks
from tests.conftest import build_atlas

HOOK_STEP = 8  # the MIGRATIONS step that renames hooks (later steps run after it)

OLD = {  # sae_id → (model, hook, hook_out, kind, site) as an atlas before this step could hold them
    "minilm": ("all-MiniLM-L6-v2", "blocks.3.hook_resid_post", None, "sae", "resid"),
    "minilm-mlp": ("all-MiniLM-L6-v2", "blocks.3.hook_mlp_out", None, "sae", "mlp"),
    "bert-module": ("all-MiniLM-L6-v2", "encoder.layer.2.output", None, "sae", None),
    "llama-module": ("HuggingFaceTB/SmolLM2-135M", "model.layers.4", None, "sae", None),
    "sparsify-resid": ("EleutherAI/pythia-70m", "layers.6", None, "sae", "resid"),
    "sparsify-tc": ("EleutherAI/pythia-70m", "layers.6.mlp", "layers.6.mlp", "transcoder", "mlp"),
    "gemma": ("gemma-2-2b", "blocks.20.hook_resid_post", None, "sae", "resid"),
    "dl": ("pythia-70m-deduped", "mlp_out_layer_3", None, "sae", None),
}


def test_migrate_renames_hooks_and_keeps_ids(family, tmp_path):
    atlas = build_atlas(tmp_path / "atlas.duckdb", family[1][:len(OLD)], match=False)
    con = duckdb.connect(str(atlas.path))
    ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY sae_id").fetchall()]
    for sid, (model, hook, hook_out, kind, site) in zip(ids, OLD.values()):
        con.execute("UPDATE saes SET model = ?, hook = ?, hook_out = ?, kind = ?, site = ?, "
                    "stack = replace(stack, 'resid', ?) WHERE sae_id = ?", [model, hook, hook_out, kind, site, str(site), sid])
    con.execute("UPDATE schema_version SET version = ?", [HOOK_STEP - 1])
    stacks = dict(con.execute("SELECT sae_id, stack FROM saes").fetchall())
    con.close()

    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "migrate"])
    assert r.exit_code == 0, r.output
    with atlas.read() as con:
        rows = {r[0]: r[1:] for r in con.execute("SELECT sae_id, hook, hook_out, site, stack FROM saes").fetchall()}
    got = dict(zip(OLD, (rows[s] for s in ids)))
    assert set(rows) == set(ids)  # ids kept
    assert got["minilm"][:3] == ("blocks.3.hook_normalized_resid_post", None, "resid")
    assert got["minilm-mlp"][:3] == ("blocks.3.hook_mlp_out", None, "mlp")
    assert got["bert-module"][:3] == ("blocks.2.hook_normalized_resid_post", None, "resid")
    assert got["llama-module"][:3] == ("blocks.4.hook_resid_post", None, "resid")
    assert got["sparsify-resid"][:3] == ("blocks.6.hook_resid_post", None, "resid")
    assert got["sparsify-tc"][:3] == ("blocks.6.mlp.hook_in", "blocks.6.hook_mlp_out", "mlp")
    assert got["gemma"][:3] == ("blocks.20.hook_resid_post", None, "resid")  # not a BERT: unchanged
    assert got["dl"][:3] == ("blocks.3.hook_mlp_out", None, "mlp")
    for key, sid in zip(OLD, ids):
        assert "None" not in rows[sid][3]
        if OLD[key][4] is None:
            assert rows[sid][3] == stacks[sid].replace("None", rows[sid][2], 1)
        # the SQL step maps every stored name as atlas_ingest.hooks does at ingest (one meaning, two places)
        model, hook, hook_out, kind, _ = OLD[key]
        want = sae_hooks(hook, hook_out, kind, model)
        if key != "minilm":  # at ingest a TransformerLens name is taken as written; only stored MiniLM names moved
            assert rows[sid][:2] == want, key
    r = CliRunner().invoke(main, ["--atlas", str(atlas.path), "saes"])
    assert r.exit_code == 0 and "None" not in r.output
