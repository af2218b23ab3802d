"""Decoder-bias init and massive-activation filtering (docs/design.md, Training a family). Planted: a stream
like a decoder LM's residual stream — a large shared mean beside sparse planted features — which an SAE whose
b_dec starts at zero must rebuild from its features on every token in a short run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from atlas_ingest.training import TrainConfig, config_hash, train_sae

D_IN, D_SAE = 24, 48


def _stream(n: int = 8_000, n_true: int = 40, offset: float = 8.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse non-negative codes of n_true planted directions (about 3 per token) plus one large mean vector whose
    norm is `offset` times a token's typical distance from it."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_true, D_IN)).astype(np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    codes = rng.exponential(1.0, (n, n_true)).astype(np.float32) * (rng.random((n, n_true)) < 3 / n_true)
    x = codes @ dirs
    spread = float(np.linalg.norm(x - x.mean(0), axis=1).mean())
    mean = rng.standard_normal(D_IN).astype(np.float32)
    mean *= offset * spread / np.linalg.norm(mean)
    return torch.from_numpy(x + mean), torch.from_numpy(mean)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(d_sae=D_SAE, samples=16_000, batch=256, eval_tokens=1000, l1_coefficient=1.0), **kw})


def test_mean_init_lowers_l0_on_a_stream_with_a_large_mean(tmp_path):
    x, mean = _stream()
    _, zeros = train_sae(x, 0, 0, "toy", tmp_path, _cfg(), model="toy")
    folder, from_mean = train_sae(x, 0, 0, "toy", tmp_path, _cfg(b_dec_init="mean"), model="toy")
    # planted: about 3 features per token; from zero, features fire on most tokens to rebuild the mean
    assert from_mean["l0"] < 0.5 * zeros["l0"], (from_mean, zeros)
    assert from_mean["fvu"] < zeros["fvu"] * 1.5, (from_mean, zeros)  # not bought with a worse reconstruction
    from safetensors.torch import load_file

    b_dec = load_file(str(folder / "sae_weights.safetensors"))["b_dec"]  # saved in the input's own units
    assert float((b_dec - mean).norm()) < 0.5 * float(mean.norm())


def test_new_fields_leave_old_cache_keys_and_split_new_ones():
    old = config_hash(_cfg(), 3, 0, "prose", 1000)
    assert old == config_hash(_cfg(b_dec_init="zeros", max_norm_multiple=None), 3, 0, "prose", 1000)
    assert len({old, config_hash(_cfg(b_dec_init="mean"), 3, 0, "prose", 1000),
                config_hash(_cfg(max_norm_multiple=4.0), 3, 0, "prose", 1000)}) == 3


def test_max_norm_multiple_drops_massive_tokens_from_training_only(tmp_path):
    x, _ = _stream(offset=0.0)
    massive = torch.zeros(len(x), dtype=torch.bool)
    massive[::50] = True  # 2% of tokens at 30x the norm along one dimension
    x[massive, 0] += 30 * float(x.norm(dim=1).median())
    _, q = train_sae(x, 0, 0, "toy", tmp_path, _cfg(max_norm_multiple=5.0), model="toy")
    assert q["dropped_frac"] == pytest.approx(0.02, abs=0.002)
    assert q["fvu_kept"] < q["fvu"]  # measured on every held-out token, massive ones included, and on the kept ones


def test_unknown_b_dec_init_is_refused(tmp_path):
    x, _ = _stream(n=2000)
    with pytest.raises(ValueError, match="b_dec_init 'median'"):
        train_sae(x, 0, 0, "toy", tmp_path, _cfg(b_dec_init="median"), model="toy")


def test_transcoder_predicts_its_output_hook_and_reads_back_as_one(tmp_path):
    """Planted: the same sparse codes written along one dictionary at the input hook and another at the output
    hook; a transcoder trained by sae_lens's trainer predicts the output from the input, saved in sae_lens's
    transcoder layout, which the atlas reads as a transcoder whose reconstruction is the output."""
    from atlas.encode import decode, encode_record
    from atlas_ingest.sources import read_sae

    rng = np.random.default_rng(3)
    codes = rng.exponential(1.0, (6_000, 40)).astype(np.float32) * (rng.random((6_000, 40)) < 3 / 40)
    x = torch.from_numpy(codes @ rng.standard_normal((40, D_IN)).astype(np.float32) + 3.0)
    y = torch.from_numpy(codes @ rng.standard_normal((40, D_IN)).astype(np.float32))
    cfg = _cfg(b_dec_init="mean", samples=40_000, lr=3e-3, lr_end=3e-4)
    folder, q = train_sae(x, 1, 0, "toy", tmp_path, cfg, model="toy", hook="blocks.1.ln2.hook_normalized",
                          target=y, hook_out="blocks.1.hook_mlp_out")
    assert q["fvu"] < 0.6 and q["l0"] < 0.3 * D_SAE, q  # predicting the output's mean alone: FVU 1
    saved = json.loads((folder / "cfg.json").read_text())
    assert saved["architecture"] == "transcoder" and saved["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    rec = read_sae(folder)
    assert rec.meta.kind == "transcoder" and rec.meta.hook_out == "blocks.1.hook_mlp_out"
    held_x, held_y = x[-1000:], y[-1000:]
    recon = decode(rec.weights, encode_record(rec, held_x), held_x)
    fvu = float(((held_y - recon) ** 2).sum() / ((held_y - held_y.mean(0)) ** 2).sum())
    assert fvu == pytest.approx(q["fvu"], abs=0.02)  # the atlas's reading computes what training measured
