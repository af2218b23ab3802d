"""`python -m bench stack-activations`: a whole stack's activation statistics in one pass on one GPU.

A Gemma-2-2B-shaped TransformerLens model (gemma-2-2b's dimensions and architecture flags, random weights
from its config: nothing is downloaded; the speed is real, the model need not be) runs over random tokens;
26 synthetic 16k JumpReLU SAEs read `blocks.L.hook_resid_post` and the 25 adjacent pairs' co-firing states
(`atlas_ingest.cofiring.new_state`: dense on the GPU when it fits) are updated from the same batch. Reports
tokens/s and each part's share of the time: forward, encode, statistics (and the final top-k).

Without CUDA it runs a smoke version at toy sizes (3 layers, d_model 64, 256-wide SAEs, 2048 tokens),
marked `"cuda": false, "smoke": true`, so that the same code runs in the tests; its times mean nothing.
"""

from __future__ import annotations

import time

import torch

from bench.timing import timed

GEMMA_2_2B = dict(d_model=2304, d_head=256, n_heads=8, d_mlp=9216, n_layers=26, n_ctx=8192, eps=1e-6,
                  d_vocab=256000, act_fn="gelu_pytorch_tanh", initializer_range=0.02, normalization_type="RMS",
                  rotary_base=10000.0, positional_embedding_type="rotary", use_attn_scale=True, n_key_value_heads=4,
                  window_size=4096, use_local_attn=True, attn_types=["local", "global"] * 13,
                  attn_scores_soft_cap=50.0, output_logits_soft_cap=30.0, gated_mlp=True, final_rms=True,
                  use_normalization_before_and_after=True)
"""transformer_lens's config of google/gemma-2-2b (loading_from_pretrained), written out: no download."""
SMOKE = dict(d_model=64, d_head=16, n_heads=4, d_mlp=128, n_layers=3, n_ctx=256, d_vocab=1000, n_key_value_heads=2,
             window_size=64, attn_types=["local", "global", "local"])
L0 = 70
"""Features firing per token in each synthetic SAE (its threshold is set on the first batch)."""


class SyntheticSAE:
    """A JumpReLU SAE with random unit encoder columns whose threshold makes about L0 features fire."""

    def __init__(self, d_in: int, d_sae: int, gen: torch.Generator, dev: torch.device):
        w = torch.randn(d_in, d_sae, generator=gen, device=dev)
        self.W_enc = w / w.norm(dim=0, keepdim=True)
        self.threshold: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pre = x.float() @ self.W_enc
        if self.threshold is None:  # the same threshold for every feature: the (1 − L0/d_sae) quantile
            sample = pre.flatten()[torch.randperm(pre.numel(), device=pre.device)[:1 << 22]]
            self.threshold = torch.quantile(sample, 1 - L0 / pre.shape[1])
        return pre * (pre > self.threshold)


def run(tokens: int = 1_000_000, d_sae: int = 16384, ctx: int = 1024, seqs: int = 8, smoke: bool | None = None) -> dict:
    """One pass of the model over `tokens` random tokens (seqs × ctx per batch), every SAE encoded once per
    batch, every adjacent pair's state updated; then each pair's top-16 both ways."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from atlas_ingest.cofiring import DenseCoFiring, new_state
    from atlas_ingest.cofiring.dense import _fp32_matmul

    cuda = torch.cuda.is_available()
    smoke = (not cuda) if smoke is None else smoke
    dev = torch.device("cuda" if cuda else "cpu")
    cfg_dict = dict(GEMMA_2_2B, **SMOKE) if smoke else dict(GEMMA_2_2B)
    if smoke:
        tokens, d_sae, ctx, seqs = min(tokens, 2048), min(d_sae, 256), min(ctx, 128), min(seqs, 4)
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(**cfg_dict, device=str(dev), dtype=torch.bfloat16 if cuda else torch.float32,
                                  seed=0)
    t_build, model = timed(lambda: HookedTransformer(cfg).eval())
    layers = cfg.n_layers
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(layers)]
    gen = torch.Generator(device=dev).manual_seed(1)
    saes = [SyntheticSAE(cfg.d_model, d_sae, gen, dev) for _ in range(layers)]
    # dense where it fits the GPU; the CPU smoke asks for dense states, to run the GPU's code path
    states = [new_state(d_sae, d_sae, dev=dev) if cuda else DenseCoFiring(d_sae, d_sae, dev=dev)
              for _ in range(layers - 1)]
    for st in states:  # multiply each batch out at once: pending batches would keep 26 SAEs' activations alive
        if isinstance(st, DenseCoFiring):
            st.block_tokens = min(st.block_tokens, seqs * ctx)
    parts = {"forward_s": 0.0, "encode_s": 0.0, "statistics_s": 0.0}
    done = 0
    t_start = time.perf_counter()
    with torch.no_grad(), _fp32_matmul("high"):  # encoders on TF32 (the statistics set their own precision)
        while done < tokens:
            n_seq = min(seqs, -(-(tokens - done) // ctx))
            toks = torch.randint(0, cfg.d_vocab, (n_seq, ctx), generator=gen, device=dev)
            t, (_, cache) = timed(lambda: model.run_with_cache(toks, names_filter=hooks, stop_at_layer=layers))
            parts["forward_s"] += t
            prev = None
            for layer, hook in enumerate(hooks):  # each SAE's activations live until the next pair has used them
                t, acts = timed(lambda: saes[layer](cache[hook].reshape(-1, cfg.d_model)))
                parts["encode_s"] += t
                if prev is not None:
                    parts["statistics_s"] += timed(lambda: states[layer - 1].add(prev, acts))[0]
                prev = acts
            del cache, prev, acts
            done += n_seq * ctx
        l0 = float(states[0].f_a.sum() / max(states[0].n, 1))
        parts["topk_s"], _ = timed(lambda: [st.finish().topk(16) for st in states])
    total = time.perf_counter() - t_start
    out = {"cuda": cuda, "smoke": smoke, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
           "layers": layers, "d_model": cfg.d_model, "d_sae": d_sae, "pairs": len(states), "tokens": done,
           "ctx": ctx, "l0": l0, "model_build_s": t_build, "seconds": total, "tokens_per_s": done / total,
           **parts, **{k.replace("_s", "_share"): v / total for k, v in parts.items()},
           "dense_pairs": sum(isinstance(s, DenseCoFiring) for s in states),
           "kernels": next((s.kernels for s in states if isinstance(s, DenseCoFiring)), None),
           "target": "<= 10 min on one GPU (1M tokens, 25 pairs of 16k)"}
    if cuda:
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out
