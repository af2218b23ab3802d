"""The registries are the one place an architecture or a method is added: every entry is complete on its own."""

import numpy as np
import pytest
import torch

from atlas.encode import encode
from atlas.match.pair import MatchParams, match_pair
from atlas.methods import METHODS, WEIGHT_METHODS, folded_decoder
from atlas.sae import ARCHS, SAEMeta, SAERecord, SAEWeights, validate

D_IN, D_SAE, K = 16, 32, 4


def _weights(arch: str, rng) -> SAEWeights:
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    extra = {name: r(D_SAE) for name in ARCHS[arch].tensors if name != "threshold"}
    threshold = np.abs(r(D_SAE)) if "threshold" in ARCHS[arch].tensors else None
    return SAEWeights(W_enc=r(D_IN, D_SAE), W_dec=r(D_SAE, D_IN), b_enc=r(D_SAE), b_dec=r(D_IN),
                      threshold=threshold, extra=extra)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_architecture_validates_and_encodes_from_its_entry(arch):
    rng = np.random.default_rng(0)
    w = _weights(arch, rng)
    k = K if ARCHS[arch].needs_k else None
    rec = validate(SAERecord(SAEMeta(model="m", hook="blocks.3.hook_resid_post", d_in=0, d_sae=0, arch=arch, k=k), w), "t")
    acts = encode(rec.weights, torch.from_numpy(rng.standard_normal((8, D_IN)).astype(np.float32)), arch, k)
    assert acts.shape == (8, D_SAE) and acts.dtype == torch.float32 and (acts >= 0).all()
    if k is not None and arch != "batchtopk":
        assert ((acts > 0).sum(1) <= K).all()


@pytest.mark.parametrize("name", WEIGHT_METHODS)
def test_each_weight_method_matches_from_its_entry(name):
    """A weight method needs nothing beyond its entry: its vectors, direction and flags drive match_pair."""
    w = _weights("jumprelu", np.random.default_rng(1))
    m = METHODS[name]
    assert m.vectors(w).shape[0] == D_SAE
    result = match_pair(w, w, "a", "b", MatchParams(method=name))
    assigned = result.matches.filter(result.matches.column("assigned"))
    assert assigned.num_rows == D_SAE and all(a == b for a, b in zip(assigned.column("feature_a").to_pylist(),
                                                                       assigned.column("feature_b").to_pylist()))
    assert ("pw_mcc" in result.stats) == m.consistency
    assert result.stats["mse_after_perm"] == 0.0
    np.testing.assert_array_equal(folded_decoder(w), w.W_dec * w.threshold[:, None])
