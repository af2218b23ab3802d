"""Ingest refusals of issue 20 (decoder overflow, a huge all-zero file) and of issue 31 item 5 (decoders at any
float32 scale, weights that are not floating point): each one line, nothing stored."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.sae import SAEError
from atlas_cli import main
from tests.test_ingest_errors import _saelens, _weights


def _row(value, n=1):
    def f(w):
        w["W_dec"][3, :n] = value
    return f


@pytest.mark.parametrize("mutate, message", [
    (_row(3e38, 2), "tensor W_dec row 3 has a norm past float32's range"),  # each finite, dec_norm inf
    (_row(3e38), "tensor W_dec row 3 holds 3e+38"),
    (_row(1e5), "tensor W_dec row 3 holds 1e+05, more than 10000 × the median decoder row norm"),
])
def test_decoder_overflow_is_refused_in_one_line(tmp_path, mutate, message):
    w = _weights()
    mutate(w)
    out = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "ingest", str(_saelens(tmp_path / "bad", w))])
    assert out.exit_code == 2 and message in out.output, out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not (tmp_path / "a.duckdb").exists() or "bad" not in CliRunner().invoke(
        main, ["--atlas", str(tmp_path / "a.duckdb"), "saes", "list"]).output


def test_a_big_all_zero_file_is_refused_from_its_header_and_a_sample(tmp_path):
    """A header-consistent file of zeros (sparse on disk: 1.6 GB that takes no space) is refused without reading it."""
    folder = tmp_path / "zeros"
    folder.mkdir()
    d_in, d_sae = 2048, 98304
    header = {}
    offset = 0
    for name, shape in [("W_enc", (d_in, d_sae)), ("W_dec", (d_sae, d_in)), ("b_enc", (d_sae,)), ("b_dec", (d_in,))]:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(folder / "sae_weights.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "d_sae": d_sae, "architecture": "standard",
                                                 "metadata": {"model_name": "m", "hook_name": "blocks.1.hook_resid_post"}}))
    t0 = time.perf_counter()
    out = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "ingest", str(folder)])
    assert out.exit_code == 2 and "64 of 64 sampled decoder rows all zero" in out.output, out.output
    assert time.perf_counter() - t0 < 5  # reading it whole took 28 s at 4 GB


def test_an_all_zero_npz_decoder_is_refused_from_a_sample(tmp_path):
    from atlas.sae import SAEError
    from atlas_ingest.sources.files import load_npz

    path = tmp_path / "params.npz"
    np.savez(path, W_enc=np.ones((16, 4096), np.float32), W_dec=np.zeros((4096, 16), np.float32))
    with pytest.raises(SAEError, match="W_dec has 64 of 64 sampled decoder rows all zero"):
        load_npz(path)
    w = np.zeros((4096, 16), np.float32)
    w[::2] = 1.0  # half the rows dead: allowed by the dead-row rule, so the sample must not refuse it
    np.savez(path, W_enc=np.ones((16, 4096), np.float32), W_dec=w)
    assert load_npz(path)["W_dec"].shape == (4096, 16)


# --- issue 31 item 5: decoders at any float32 scale, and weights that are not floating point ------------------

def _scaled(name, factor):
    def f(w):
        w[name] = (w[name].astype(np.float64) * factor).astype(np.float32)
    return f


def _ingest(tmp_path, folder, *args):
    return CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "ingest", str(folder), *args])


@pytest.mark.parametrize("mutate, message", [
    (_scaled("W_dec", 1e20), "W_dec row 9 has norm 4.05e+20, above 1e+15"),  # main: stored, every dec_norm inf
    (_scaled("W_dec", 1e-30), "W_dec has median row norm 2.86e-30, below 1e-15"),  # main: every dec_norm 0
    (_scaled("W_dec", 1e-40), "W_dec has median row norm 2.86e-40, below 1e-15"),  # subnormal rows
    (_scaled("threshold", 1e30), "threshold × W_dec row 6 has norm 3.22e+30, above 1e+15"),  # decoder_mse's rows
])
def test_decoder_scale_past_float32_squares_is_refused_in_one_line(tmp_path, mutate, message):
    w = _weights()
    mutate(w)
    out = _ingest(tmp_path, _saelens(tmp_path / "bad", w))
    assert out.exit_code == 2 and message in out.output and "bad" in out.output, out.output
    assert out.output.count("\n") == 1
    assert not (tmp_path / "a.duckdb").exists() or "bad" not in CliRunner().invoke(
        main, ["--atlas", str(tmp_path / "a.duckdb"), "saes", "list"]).output


def _as(name, dtype):
    def f(w):
        w[name] = (w[name] > 0).astype(dtype) if dtype is bool else np.round(w[name] * 3).astype(dtype)
    return f


@pytest.mark.parametrize("mutate, tensor, dtype", [
    (_as("W_dec", bool), "W_dec", "bool"), (_as("W_dec", np.int32), "W_dec", "int32"),
    (_as("threshold", np.int64), "threshold", "int64"), (_as("W_enc", np.uint8), "W_enc", "uint8"),
])
def test_non_float_weights_are_refused_by_file_and_tensor(tmp_path, mutate, tensor, dtype):
    w = _weights()
    mutate(w)
    out = _ingest(tmp_path, _saelens(tmp_path / "bad", w))
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert f"bad/sae_weights.safetensors: tensor {tensor} has dtype {dtype}; SAE weights are floating point" in out.output


def test_non_float_weights_are_refused_in_npz_and_pt_files(tmp_path):
    import torch

    from atlas_ingest.sources import read_sae

    w = _weights()
    _as("W_dec", np.int32)(w)
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / "params.npz", **w)
    with pytest.raises(SAEError, match=r"npz/params.npz: tensor W_dec has dtype int32"):
        read_sae(tmp_path / "npz", layer=1)
    folder = tmp_path / "trainer_0"
    folder.mkdir()
    torch.save({"encoder.weight": torch.ones(16, 8), "encoder.bias": torch.zeros(16),
                "decoder.weight": torch.ones(8, 16, dtype=torch.bool), "bias": torch.zeros(8)}, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "activation_dim": 8,
                                                                "dict_size": 16, "layer": 3, "lm_name": "m"}}))
    with pytest.raises(SAEError, match=r"trainer_0/ae.pt: tensor decoder.weight has dtype bool"):
        read_sae(folder)


def test_tiny_decoder_rows_keep_their_norm_and_direction(tmp_path):
    """Rows of 1e-25 and subnormal 1e-40 among ordinary ones: stored with their true norm (main: 0.0) and
    found by search with cosine 1 (main: the 1e-12 floor of the old unit_rows left them near 0)."""
    import duckdb

    from atlas import index as fx

    w = _weights()
    w["W_dec"][2] *= np.float32(1e-25)
    w["W_dec"][5] *= np.float32(1e-40)
    assert _ingest(tmp_path, _saelens(tmp_path / "tiny", w)).exit_code == 0
    con = duckdb.connect(str(tmp_path / "a.duckdb"), read_only=True)
    norms = np.array([r[0] for r in con.execute("SELECT dec_norm FROM features ORDER BY feature").fetchall()])
    index_file = con.execute("SELECT index_file FROM saes").fetchone()[0]
    con.close()
    exact = np.sqrt((w["W_dec"].astype(np.float64) ** 2).sum(1))
    np.testing.assert_allclose(norms, exact, rtol=1e-6)
    assert norms[2] > 0 and norms[5] > 0
    index = fx.load(tmp_path / "a.files" / "indexes" / index_file)
    for row in (2, 5):
        scores, ids = fx.search(index, w["W_dec"][row][None, :], 1)
        assert ids[0, 0] == row and scores[0, 0] == pytest.approx(1.0, abs=1e-3)


@settings(max_examples=60, deadline=None)
@given(exponent=st.integers(-30, 36), seed=st.integers(0, 2**16))
def test_norms_cosines_and_search_do_not_depend_on_the_decoder_scale(exponent, seed):
    """row_norms, unit_rows, the torch cosine candidates and a FAISS search give the same answer for W and for
    W × 10^exponent, whatever float32 squares would make of it (main: inf or 0 past 1e19 and below 1e-19)."""
    from atlas import index as fx
    from atlas.match.candidates import topk_both

    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((24, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    s = 10.0 ** exponent
    a_s, b_s = (a * s).astype(np.float32), (b * s).astype(np.float32)
    np.testing.assert_allclose(fx.unit_rows(a_s), fx.unit_rows(a), atol=1e-5)
    ref, got = topk_both(a, b, 3), topk_both(a_s, b_s, 3)
    np.testing.assert_allclose(got.a2b_score, ref.a2b_score, atol=1e-5)
    np.testing.assert_allclose(got.b2a_score, ref.b2a_score, atol=1e-5)
    scores, ids = fx.search(fx.build(b_s), a_s, 1)
    ref_scores, _ = fx.search(fx.build(b), a, 1)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    np.testing.assert_allclose(scores[:, 0], ref.a2b_score[:, 0], atol=1e-5)
    np.testing.assert_allclose(fx.row_norms(a_s) / s, fx.row_norms(a), rtol=1e-5)  # dec_norm's function


@pytest.mark.parametrize("method, scale", [("decoder_cos", 1e20), ("decoder_cos", 1e-30),
                                           ("decoder_mse", 1e14), ("decoder_mse", 1e-14)])
def test_planted_truth_is_recovered_at_any_accepted_scale(family, truth, method, scale):
    """decoder_cos is scale-free (main: nothing assigned at 1e20 or 1e-30, every cosine came out 0);
    decoder_mse keeps its assignment at both ends of the SCALE window the ingest accepts."""
    from dataclasses import replace

    from atlas.match.pair import MatchParams, match_pair
    from atlas_ingest.sources import read_sae

    a, b = (read_sae(f) for f in family[1][:2])
    ida, idb = a.meta.sae_id, b.meta.sae_id

    def assigned(wa, wb):
        result = match_pair(wa, wb, ida, idb, MatchParams(method=method))
        rows = result.matches.to_pylist()
        assert all(np.isfinite(r["score"]) for r in rows) and np.isfinite(result.stats["mse_after_perm"])
        return {(r["feature_a"], r["feature_b"]) for r in rows if r["assigned"]}

    big = [replace(w, W_dec=(w.W_dec.astype(np.float64) * scale).astype(np.float32)) for w in (a.weights, b.weights)]
    got = assigned(*big)
    carry = {(t["feature_a"], t["feature_b"]) for t in truth
             if (t["sae_a"], t["sae_b"], t["kind"]) == (ida, idb, "carry")}
    assert len(got & carry) >= 0.99 * len(carry)
    assert len(got ^ assigned(a.weights, b.weights)) <= 0.01 * len(carry)
