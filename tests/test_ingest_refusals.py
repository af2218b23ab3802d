"""Ingest refusals of issue 20: decoder overflow and a huge all-zero file, each one line, nothing stored."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
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
    from ingest.sources.files import load_npz

    path = tmp_path / "params.npz"
    np.savez(path, W_enc=np.ones((16, 4096), np.float32), W_dec=np.zeros((4096, 16), np.float32))
    with pytest.raises(SAEError, match="W_dec has 64 of 64 sampled decoder rows all zero"):
        load_npz(path)
    w = np.zeros((4096, 16), np.float32)
    w[::2] = 1.0  # half the rows dead: allowed by the dead-row rule, so the sample must not refuse it
    np.savez(path, W_enc=np.ones((16, 4096), np.float32), W_dec=w)
    assert load_npz(path)["W_dec"].shape == (4096, 16)
