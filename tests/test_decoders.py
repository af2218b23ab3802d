"""Decoder LMs by TransformerLens name, offline: tiny random GPT-2 / Llama / Gemma 2 models in an HF cache built
here, loaded the way `--model gpt2` loads them (TransformerLens's own loading), each hook equal to TransformerLens's
HookedTransformer (unprocessed, as sae_lens loads models) on the same weights; module-path hooks equal to their
TransformerLens names' tensors; windows framed with BOS, left out of every statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_ingest import models
from atlas_ingest.hooks import HookedRunner, tl_hook
from tests import tiny_lms
from tests.tiny_lms import hub  # noqa: F401  (the offline HF cache fixture)

HOOKS = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_z", "hook_attn_out", "hook_mlp_out",
         "ln1.hook_normalized", "ln2.hook_normalized", "mlp.hook_post"]


@pytest.mark.parametrize("family", list(tiny_lms.NAMES))
def test_each_hook_equals_transformer_lens_on_its_tiny_model(hub, family):
    """The agreement table: every hook of a block, captured through the model `--model NAME` loads, equals
    TransformerLens's own HookedTransformer cache of the same weights; resid_post also equals HF's hidden state."""
    lm = models.load(tiny_lms.NAMES[family], device="cpu")
    assert lm.spec.tl_name and lm.causal and type(lm.model).__name__ == "TransformerBridge"
    hf = lm.model.original_model
    ref = tiny_lms.hooked_transformer(family, hf)
    ids = torch.randint(3, tiny_lms.VOCAB, (2, 12))
    names = [f"blocks.1.{h}" for h in HOOKS]
    got = HookedRunner(lm.model).run(ids, capture=names)
    _, cache = ref.run_with_cache(ids, names_filter=names)
    for name in names:
        want = cache[name].flatten(-2) if name.endswith("hook_z") else cache[name]
        assert got[name].shape == want.shape, name
        torch.testing.assert_close(got[name], want, rtol=1e-4, atol=1e-5, msg=name)
    hidden = hf(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got["blocks.1.hook_resid_post"], hidden[2], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["blocks.1.hook_resid_pre"], hidden[1], rtol=0, atol=1e-6)


MODULE_PATHS = {  # (family, module path as SAE files name it, output or input of the module)
    "gpt2": [("transformer.h.1", "out"), ("transformer.h.1.mlp", "out"), ("transformer.h.1.attn", "out"),
             ("h.2", "out")],
    "llama": [("model.layers.1", "out"), ("model.layers.1.mlp", "out"), ("model.layers.1.self_attn", "out"),
              ("layers.2", "out"), ("layers.1.mlp", "in")],
    "gemma2": [("model.layers.1", "out"), ("model.layers.1.mlp", "out"), ("model.layers.1.self_attn", "out"),
               ("layers.2.mlp", "in")],
}


def _module(hf, path: str):
    obj = hf
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


@pytest.mark.parametrize("family", list(tiny_lms.NAMES))
def test_module_path_hooks_equal_their_transformer_lens_names(hub, family):
    """An SAE whose file names its hook by HF module path reads, under the mapped name, the very tensor that
    module outputs (or, for a transcoder's `layers.K.mlp`, receives)."""
    lm = models.load(tiny_lms.NAMES[family], device="cpu")
    hf = lm.model.original_model
    ids = torch.randint(3, tiny_lms.VOCAB, (2, 9))
    seen = {}
    handles = []
    for path, side in MODULE_PATHS[family]:
        full = path if path.startswith(("transformer.", "model.")) else \
            ("transformer." if family == "gpt2" else "model.") + path
        module = _module(hf, full)
        if side == "in":
            handles.append(module.register_forward_pre_hook(lambda m, a, p=path: seen.__setitem__(p, a[0].detach())))
        else:
            handles.append(module.register_forward_hook(
                lambda m, a, o, p=path: seen.__setitem__(p, (o[0] if isinstance(o, tuple) else o).detach())))
    names = {path: tl_hook(path, tiny_lms.NAMES[family], side) for path, side in MODULE_PATHS[family]}
    try:
        # the final norm last, so the forward pass runs past every module hooked by hand
        got = HookedRunner(lm.model).run(ids, capture=[*names.values(), "ln_final.hook_normalized"])
    finally:
        for h in handles:
            h.remove()
    for path, name in names.items():
        torch.testing.assert_close(got[name], seen[path], rtol=0, atol=1e-6, msg=f"{path} -> {name}")
    if family == "gemma2":  # why `.mlp` maps to the module's own output there: TL's hook_mlp_out is after the post-norm
        assert names["model.layers.1.mlp"] == "blocks.1.mlp.hook_out"
        assert not torch.allclose(HookedRunner(lm.model).run(ids, capture=["blocks.1.hook_mlp_out"])["blocks.1.hook_mlp_out"],
                                  seen["model.layers.1.mlp"])
    else:
        assert names[MODULE_PATHS[family][1][0]] == "blocks.1.hook_mlp_out"


def test_windows_start_with_bos_and_leave_it_out(hub):
    """Causal windows as sae_lens feeds them: BOS first, no [SEP]; the stored activations are the windows'
    own tokens, equal to the model run on [BOS] + window by hand."""
    from atlas_ingest.activations import ActivationConfig, model_batches

    lm = models.load("gpt2", device="cpu")
    cfg = ActivationConfig(model="gpt2", corpus="prose", layers=[1], hooks=["blocks.0.hook_mlp_out"], window=20,
                           max_tokens=200, batch_windows=4)
    assert cfg.all_hooks() == ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
    batches = list(model_batches(cfg))
    first = batches[0]
    bos = lm.tokenizer.bos_token_id
    assert bos is not None and bos not in set(first["token_ids"].tolist())
    n0 = int((first["doc"] == first["doc"][0]).sum().clip(max=20))
    window = first["token_ids"][:n0].long()
    want = HookedRunner(lm.model).run(torch.cat([torch.tensor([bos]), window])[None],
                                      capture=["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"][0, 1:]
    torch.testing.assert_close(first["blocks.1.hook_resid_post"][:n0], want, rtol=0, atol=1e-6)
    assert sum(len(b["doc"]) for b in batches) >= 200


def test_bos_is_only_what_the_tokenizer_has():
    """Framing: a BERT window is [CLS] ... [SEP]; a causal one starts with BOS (none where it has none)."""
    from types import SimpleNamespace

    tok = SimpleNamespace(cls_token_id=101, sep_token_id=102, bos_token_id=None, pad_token_id=0)
    spec = models.Spec("m", "encoder", "x")
    assert models.LoadedModel(spec, None, tok).frame() == ([101], [102])
    assert models.LoadedModel(models.Spec("m", "bridge", "x"), None, tok).frame() == ([], [])
    tok.bos_token_id = 7
    assert models.LoadedModel(models.Spec("m", "bridge", "x"), None, tok).frame() == ([7], [])


def test_model_names_resolve_without_weights(hub, tmp_path):
    """One place says what a name means: a TransformerLens name or alias, an HF folder, a .gguf file or a
    folder with one; anything else is one line naming it."""
    _, snaps = hub
    assert models.resolve("gpt2") == models.Spec("gpt2", "bridge", "gpt2", tl_name=True)
    assert models.resolve("pythia-70m").path == "EleutherAI/pythia-70m"
    assert models.resolve(str(snaps["llama"])).route == "bridge"
    assert models.resolve("all-MiniLM-L6-v2").route == "encoder"
    (tmp_path / "m.gguf").write_bytes(b"")
    assert models.resolve(str(tmp_path / "m.gguf")).gguf_file == "m.gguf"
    assert models.resolve(str(tmp_path)).gguf_file == "m.gguf"
    with pytest.raises(ValueError, match=r"model 'no-such/model': not a bundled model") as e:
        models.resolve("no-such/model")
    assert "\n" not in str(e.value)


def test_the_hf_folder_route_equals_the_transformer_lens_name_route(hub):
    """The same weights from their cache folder (the HF-checkpoint route, wrapped in TransformerBridge by us)
    give what the TransformerLens name gives."""
    _, snaps = hub
    ids = torch.randint(3, tiny_lms.VOCAB, (1, 8))
    by_name = HookedRunner(models.load("meta-llama/Llama-3.2-1B", device="cpu").model).run(ids, capture=["blocks.2.hook_resid_post"])
    by_folder = HookedRunner(models.load(str(snaps["llama"]), device="cpu").model).run(ids, capture=["blocks.2.hook_resid_post"])
    torch.testing.assert_close(by_name["blocks.2.hook_resid_post"], by_folder["blocks.2.hook_resid_post"], rtol=0, atol=0)
    assert np.isfinite(by_folder["blocks.2.hook_resid_post"].numpy()).all()


@pytest.mark.parametrize("family", list(tiny_lms.NAMES))
def test_edits_flow_on_as_in_transformer_lens(hub, family):
    """An edit at each hook reaches the later layers as TransformerLens's own edit does: on the Bridge,
    resid_mid is the MLP norm's input, so its edit is applied through attn_out (atlas_ingest.hooks, _mid_edits)
    to reach the residual's skip path too."""
    from atlas_ingest.hooks import subtract

    lm = models.load(tiny_lms.NAMES[family], device="cpu")
    ref = tiny_lms.hooked_transformer(family, lm.model.original_model)
    ids = torch.randint(3, tiny_lms.VOCAB, (2, 10))
    where = torch.zeros(2, 10, dtype=torch.bool)
    where[0, 3] = where[1, 5] = True
    read = "blocks.2.hook_resid_post"
    runner = HookedRunner(lm.model)
    clean = runner.run(ids, capture=[read])[read]
    for at in ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out",
               "blocks.1.attn.hook_z", "blocks.1.ln2.hook_normalized"):
        vec = torch.randn(32) * 3
        got = runner.run(ids, capture=[read, at], edit={at: subtract(vec, where)})

        def hook(x, hook):
            if x.dim() == 4:  # TransformerLens's z: [batch, pos, head, d_head]
                return x - where[..., None, None] * vec.view(x.shape[-2], x.shape[-1])
            return x - where.unsqueeze(-1) * vec

        with ref.hooks(fwd_hooks=[(at, hook)]):
            _, cache = ref.run_with_cache(ids, names_filter=[read, at])
        torch.testing.assert_close(got[read], cache[read], rtol=1e-4, atol=1e-5, msg=at)
        want_at = cache[at].flatten(-2) if at.endswith("hook_z") else cache[at]
        torch.testing.assert_close(got[at], want_at, rtol=1e-4, atol=1e-5, msg=at)  # a capture sees the edit
        assert (got[read] - clean).abs().max() > 0.05, at
