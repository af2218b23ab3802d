"""Bad SAE input through the CLI: one `error:` line naming the file, exit 2, and the atlas untouched."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from atlas_cli import main
from atlas.store import Atlas


def _weights(d_in=8, d_sae=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.standard_normal((d_in, d_sae), np.float32), "W_dec": rng.standard_normal((d_sae, d_in), np.float32),
            "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_in, np.float32),
            "threshold": rng.uniform(0.1, 1, d_sae).astype(np.float32)}


def _saelens(folder, w, cfg=None):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = cfg if cfg is not None else {"d_in": 8, "d_sae": 16, "architecture": "jumprelu",
                                       "metadata": {"model_name": "m", "hook_name": "blocks.1.hook_resid_post"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _zero_rows(n):
    def f(w):
        w["W_dec"][:n] = 0
    return f


@pytest.mark.parametrize("mutate, cfg, message", [
    (lambda w: w["W_dec"].fill(0), None, "bad: tensor W_dec is all zeros"),
    (_zero_rows(12), None, "tensor W_dec has 12 of 16 decoder rows all zero"),
    (lambda w: w["threshold"].__setitem__(slice(0, 3), -0.5), None, "tensor threshold has 3 negative values"),
    (None, [], "cfg.json: expected a JSON object, found list"),
    (None, "just a string", "cfg.json: expected a JSON object, found str"),
])
def test_degenerate_sae_refused_in_one_line_nothing_stored(tmp_path, mutate, cfg, message):
    atlas = str(tmp_path / "a.duckdb")
    runner = CliRunner()
    assert runner.invoke(main, ["--atlas", atlas, "ingest", str(_saelens(tmp_path / "good", _weights(seed=1)))]).exit_code == 0
    w = _weights()
    if mutate:
        mutate(w)
    bad = _saelens(tmp_path / "bad", w, cfg)
    for args in (["ingest", str(bad)], ["ingest", "-r", str(tmp_path)]):
        r = runner.invoke(main, ["--atlas", atlas, *args])
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert message in r.output and str(bad) in r.output
    with Atlas(atlas).read() as con:
        assert con.execute("SELECT count(*) FROM saes").fetchone()[0] == 1


def test_non_utf8_folder_name_refused_in_one_line(tmp_path):
    root = tmp_path / "downloads"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"layer\xff")
    os.mkdir(odd)
    _saelens(__import__("pathlib").Path(os.fsdecode(odd)), _weights())
    r = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "ingest", "-r", str(root)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "folder name is not valid UTF-8" in r.output and "layer\\udcff" in r.output


def test_cli_format_choices_are_the_reader_registry():
    from atlas_ingest.sources import FORMATS

    fmt = next(p for p in main.commands["ingest"].params if p.name == "fmt")
    assert set(fmt.type.choices) == set(FORMATS) - {"release"}  # releases go by --release
