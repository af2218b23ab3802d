"""Tiny random decoder LMs of three families (GPT-2, Llama, Gemma 2) with a byte-level BPE tokenizer trained
here, saved into a Hugging Face cache under the names TransformerLens knows them by; and TransformerLens's
own HookedTransformer of the same weights (its weight conversion, no processing: as sae_lens loads models),
the reference every hook is checked against."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.hub import snapshot

VOCAB = 300
NAMES = {"gpt2": "gpt2", "llama": "meta-llama/Llama-3.2-1B", "gemma2": "google/gemma-2-2b"}
"""Family → the TransformerLens name its tiny stand-in is cached under."""
TEXT = ["The cat sat on the mat and looked at the dog.", "Feature flow in small models is measured by ablation.",
        "def f(x):\n    return x + 1\n", "Paris is the capital of France; Rome is the capital of Italy."]


def tokenizer():
    """A byte-level BPE tokenizer (every text encodes) with <bos>, <eos>, <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(TEXT * 10, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<bos>", "<eos>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def hf_model(family: str, seed: int = 0):
    """The family's tiny HF causal LM, weights drawn at std 0.2 (activations far from zero, so that a hook
    mixed up with its neighbour cannot pass)."""
    from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                              LlamaForCausalLM)

    torch.manual_seed(seed)
    if family == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=160, n_embd=32, n_layer=3, n_head=4,
                                       bos_token_id=0, eos_token_id=1))
    elif family == "llama":
        m = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=160,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=2))
    else:
        m = Gemma2ForCausalLM(Gemma2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           query_pre_attn_scalar=8, max_position_embeddings=160, sliding_window=16,
                                           bos_token_id=0, eos_token_id=1, pad_token_id=2))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m.eval()


def cache_models(hf_home: Path) -> dict[str, Path]:
    """Every family's tiny model and the tokenizer in $HF_HOME/hub under NAMES; returns family → snapshot."""
    tok = tokenizer()
    out = {}
    for family, name in NAMES.items():
        snap = snapshot(hf_home, name)
        hf_model(family).save_pretrained(snap)
        tok.save_pretrained(snap)
        out[family] = snap
    return out


def hooked_transformer(family: str, hf):
    """TransformerLens's HookedTransformer of `hf`'s weights through TransformerLens's own conversion,
    unprocessed (no LayerNorm folding, no centring: sae_lens's from_pretrained_no_processing)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions as wc

    c = hf.config
    if family == "gpt2":
        cfg = dict(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=4 * c.n_embd, n_layers=c.n_layer,
                   n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size, act_fn="gelu_new",
                   normalization_type="LN", positional_embedding_type="standard", original_architecture="GPT2LMHeadModel")
        convert = wc.convert_gpt2_weights
    elif family == "llama":
        d_head = c.hidden_size // c.num_attention_heads
        cfg = dict(d_model=c.hidden_size, d_head=d_head, n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
                   d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
                   eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS",
                   positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=c.rope_parameters["rope_theta"],
                   final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM")
        convert = wc.convert_llama_weights
    else:  # as TransformerLens's own gemma-2 config, at these sizes
        cfg = dict(d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
                   d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
                   eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn="gelu_pytorch_tanh", normalization_type="RMS",
                   positional_embedding_type="rotary", rotary_base=10000.0, rotary_dim=c.head_dim, use_attn_scale=True,
                   window_size=c.sliding_window, use_local_attn=True, attn_types=["local", "global"] * (c.num_hidden_layers // 2),
                   attn_scores_soft_cap=c.attn_logit_softcapping, output_logits_soft_cap=c.final_logit_softcapping,
                   gated_mlp=True, final_rms=True, use_normalization_before_and_after=True,
                   original_architecture="Gemma2ForCausalLM")
        convert = wc.convert_gemma_weights
    cfg = HookedTransformerConfig(**cfg)
    ht = HookedTransformer(cfg)
    ht.load_and_process_state_dict(convert(hf, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False, refactor_factored_attn_matrices=False)
    return ht.eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """HF_HOME holding the three tiny models, offline, for the module that imports this fixture."""
    from atlas_ingest import models
    from tests.hub import offline_hub

    home = tmp_path_factory.mktemp("hf")
    snaps = cache_models(home)
    with pytest.MonkeyPatch.context() as mp:
        offline_hub(mp, home)
        yield home, snaps
    models.release()


def write_saes(out: Path, model: str, hooks: list[str], d: int, n: int = 16, seed: int = 0, noise: float = 0.15,
               hook_out: dict[str, str] | None = None) -> list[Path]:
    """sae_lens folders of untrained ReLU SAEs at `hooks` of `model` (W_enc = W_dec.T, unit rows, a bias that
    lets each feature fire on a fraction of tokens). Every SAE's decoder is one shared set of directions plus
    `noise`, so matching the stack gives carry edges."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, d)).astype(np.float32)
    folders = []
    for i, hook in enumerate(hooks):
        dec = base + noise * np.linalg.norm(base, axis=1, keepdims=True) * rng.standard_normal(base.shape) / np.sqrt(d)
        dec = (dec / np.linalg.norm(dec, axis=1, keepdims=True)).astype(np.float32)
        folder = out / f"{model.replace('/', '_')}-{i}-{hook}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"W_enc": np.ascontiguousarray(dec.T), "W_dec": dec, "b_enc": np.full(n, -0.5, np.float32),
                   "b_dec": np.zeros(d, np.float32)}, str(folder / "sae_weights.safetensors"))
        md = {"model_name": model, "hook_name": hook, "dataset_path": "prose", "seed": seed}
        if hook_out and hook in hook_out:
            md["hook_name_out"] = hook_out[hook]
        (folder / "cfg.json").write_text(json.dumps({
            "d_in": d, "d_sae": n, "dtype": "float32", "architecture": "transcoder" if md.get("hook_name_out") else "standard",
            "apply_b_dec_to_input": not md.get("hook_name_out"), "normalize_activations": "none", "metadata": md}))
        folders.append(folder)
    return folders
