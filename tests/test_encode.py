"""Feature activations: `atlas.encode.encode` on an SAE written by sae_lens equals sae_lens's own `encode`,
per architecture; SAE Match's quality checks of an assignment (`atlas_ingest.quality.Quality`) on planted cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.encode import decode, encode, encode_record
from atlas.sae import SAEError
from atlas_ingest.sources import read_sae

D_IN, D_SAE, K = 24, 48, 6


def _randomise(sae, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if name.startswith("b_") else 1.0))
            if name in ("threshold", "log_threshold"):  # positive JumpReLU thresholds of a realistic size
                p.copy_(torch.rand(p.shape, generator=g) + 0.5 if name == "threshold" else torch.log(torch.rand(p.shape, generator=g) + 0.5))


def _standard(**kw):
    from sae_lens import StandardSAE, StandardSAEConfig

    return StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, **kw))


def _jumprelu(**kw):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    return JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, **kw))


def _topk(**kw):
    from sae_lens import TopKSAE, TopKSAEConfig

    return TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, **kw))


def _gated(**kw):
    from sae_lens import GatedSAE, GatedSAEConfig

    return GatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE, **kw))


CASES = {
    "standard": (_standard, {}),
    "standard, b_dec not subtracted": (_standard, {"apply_b_dec_to_input": False}),
    "jumprelu": (_jumprelu, {}),
    "topk": (_topk, {}),
    "topk, rescaled by decoder norm": (_topk, {"rescale_acts_by_decoder_norm": True}),
    "gated": (_gated, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_encode_equals_sae_lens(case, tmp_path):
    make, kw = CASES[case]
    sae = make(**kw)
    _randomise(sae, seed=len(case))
    sae.cfg.metadata.model_name = "m"
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    sae.save_model(str(tmp_path))
    try:
        rec = read_sae(tmp_path)
    except SAEError as e:  # an architecture the readers refuse must say so by name, never load as another one
        pytest.xfail(f"{case}: refused at read ({e})")
    x = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        expected = sae.encode(x)
    got = encode_record(rec, x)
    assert got.shape == expected.shape == (300, D_SAE)
    fires = (expected > 0).float().mean().item()
    assert 0.02 < fires < 0.9, fires  # a real mix of firing and silent features, not all zeros
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_batchtopk_saved_for_inference_encodes_as_sae_lens_loads_it(tmp_path):
    """sae_lens saves a trained batch-top-k SAE as JumpReLU with its learned threshold."""
    from sae_lens import SAE, BatchTopKTrainingSAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, decoder_init_norm=0.1))
    _randomise(sae, seed=3)
    with torch.no_grad():
        sae.topk_threshold.fill_(1.5)
    sae.cfg.metadata.model_name = "m"
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    sae.save_inference_model(str(tmp_path))
    rec = read_sae(tmp_path)
    loaded = SAE.load_from_disk(str(tmp_path), device="cpu")
    x = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        expected = loaded.encode(x)
    assert rec.meta.arch == "jumprelu" and (expected > 0).any()
    torch.testing.assert_close(encode_record(rec, x), expected, rtol=1e-5, atol=1e-5)


# --- Quality: SAE Match's matching score and explained variance of an assignment ---


def _relu_sae(rng, d_in=32, d_sae=64):
    from atlas.sae import SAEMeta, SAERecord, SAEWeights

    w = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    weights = SAEWeights(W_enc=w.T.copy(), W_dec=w, b_enc=np.full(d_sae, -0.5, np.float32),
                         b_dec=np.zeros(d_in, np.float32))
    meta = SAEMeta(model="m", hook="blocks.0.hook_resid_post", d_in=d_in, d_sae=d_sae, arch="standard", sae_id="a")
    return SAERecord(meta, weights)


def _permuted(rec, perm):
    """The same SAE with its features relabelled: new feature perm[i] is old feature i."""
    from dataclasses import replace

    from atlas.sae import SAERecord

    inv = np.argsort(perm)
    w = rec.weights
    return SAERecord(replace(rec.meta, sae_id="b"), replace(w, W_enc=w.W_enc[:, inv], W_dec=w.W_dec[inv], b_enc=w.b_enc[inv]))


def _quality(a, b, x, fa, fb) -> dict:
    """The correlate job's checks of the assignment fa -> fb, over tokens x (the same at both layers here)."""
    from atlas_ingest.cofiring import accumulate
    from atlas_ingest.quality import Quality

    acts_a, acts_b = encode(a.weights, x, "standard"), encode(b.weights, x, "standard")
    state = accumulate(acts_a.split(500), acts_b.split(500))
    q = Quality(b, np.asarray(fa, np.int64), np.asarray(fb, np.int64))
    for part_a, part_x in zip(acts_a.split(500), x.split(500)):
        q.add(part_a, part_x)
    return q.result(state)


def test_weight_match_quality_on_planted_assignments():
    rng = np.random.default_rng(0)
    a = _relu_sae(rng)
    perm = rng.permutation(64)
    b = _permuted(a, perm)
    x = torch.from_numpy(rng.standard_normal((2000, 32)).astype(np.float32))
    fa = np.arange(64)

    right = _quality(a, b, x, fa, perm)
    # b is a relabelling of a: the right assignment reproduces a's own reconstruction, and b fires wherever a does
    recon = decode(a.weights, encode(a.weights, x, "standard")).numpy()
    own_ev = 1 - ((x.numpy() - recon) ** 2).sum() / ((x.numpy() - x.numpy().mean(0)) ** 2).sum()
    assert right["matching_score"] == pytest.approx(1.0)
    assert right["explained_variance"] == pytest.approx(own_ev, abs=1e-5) and own_ev > 0.3

    wrong = _quality(a, b, x, fa, np.roll(perm, 1))
    assert wrong["matching_score"] < 0.5 and wrong["explained_variance"] < right["explained_variance"] - 0.3

    half = _quality(a, b, x, fa[:32], perm[:32])  # half the features kept: part of the variance
    assert half["matching_score"] == pytest.approx(1.0)
    assert wrong["explained_variance"] < half["explained_variance"] < right["explained_variance"]
