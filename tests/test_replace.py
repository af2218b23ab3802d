"""`atlas ingest --replace`: new weights under an old id take every row derived from the old weights with
them (matches, pair stats, correlations, compositions, examples, training, widths), leave every other row as it was,
and the next `atlas match` recomputes exactly the pairs of the replaced SAE."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from atlas.match.pair import MatchParams
from atlas.queries.selection import select_pairs
from atlas.store import Atlas
from atlas_cli import main
from atlas_ingest.jobs.match import run_match

from .conftest import build_atlas

SAE0, SAE1, SAE2 = (f"synth-resid{i}-w256-s0-A" for i in range(3))
SIB0 = "synth-resid0-w256-s1-A"
DERIVED = {  # table -> the columns naming an SAE
    "matches": ("sae_a", "sae_b"), "pair_stats": ("sae_a", "sae_b"), "correlations": ("sae_a", "sae_b"),
    "compositions": ("sae_a", "sae_b"), "examples": ("sae_id",), "training": ("sae_id",), "widths": ("sae_a", "sae_b"),
}


def _table(path, table):
    with duckdb.connect(str(path), read_only=True) as con:
        cols = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
        return [dict(zip(cols, r)) for r in con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()]


def _touches(row, table, sae):
    return any(row[c] == sae for c in DERIVED[table])


def _add_derived_rows(atlas: Atlas, pairs: list[tuple[str, str]]) -> None:
    """Rows as `atlas correlate` and the widths job write them, for each pair (those jobs need a model's
    activations or SAEs of other widths)."""
    with atlas.write() as w, w.transaction() as con:
        for i, (a, b) in enumerate(pairs):
            w.put_part("correlations", a, b, "", pa.table({
                "sae_a": [a], "feature_a": [1], "sae_b": [b], "feature_b": [2], "pearson": [0.9], "p_b_given_a": [0.8],
                "jaccard": [0.7], "n_tokens": [100]}), "corr-test")
            w.put_part("compositions", a, b, "", pa.table({
                "sae_b": [b], "feature_b": [3], "kind": ["OR"], "parents": [[1, 2]], "sae_a": [a], "score": [0.6]}),
                "corr-test")
            for sae in (a, b):
                con.execute("INSERT INTO examples VALUES (?, ?, 'top', 1.5, 7, ['a', 'b'], 1, 'prose', 'corr-test')",
                            [sae, i])
                con.execute("INSERT OR IGNORE INTO training VALUES (?, 0.3, 20, 0.01, 1000, 1000)", [sae])
            con.execute("INSERT INTO widths VALUES (?, 4, ?, 'split', 2, [5, 6], [0.8, 0.75], 0.9, 5, 0.8, 0.7, 'h', "
                        "'widths-test', 0.1)", [a, b])


@pytest.fixture()
def atlas(family, tmp_path):
    folders = family[1]
    a = build_atlas(tmp_path / "a.duckdb", [folders[0], folders[1], folders[2], folders[4]], match=True)
    _add_derived_rows(a, [(SAE0, SAE1), (SAE1, SAE2), (SAE0, SIB0)])
    return a


def test_replace_removes_exactly_what_the_old_weights_produced(atlas, family):
    before = {t: _table(atlas.path, t) for t in DERIVED}
    assert all(any(_touches(r, t, SAE0) for r in rows) for t, rows in before.items())  # something to remove
    assert all(any(not _touches(r, t, SAE0) for r in rows) for t, rows in before.items())  # and to keep
    old = next(s for s in _table(atlas.path, "saes") if s["sae_id"] == SAE0)
    other = family[1][3]  # layer 3's weights, stored under layer 0's id

    runner = CliRunner()
    refused = runner.invoke(main, ["--atlas", str(atlas.path), "ingest", str(other), "--id", SAE0, "--hook", "blocks.0.hook_resid_post"])
    assert refused.exit_code == 2 and SAE0 in refused.output and "--replace" in refused.output
    assert {t: _table(atlas.path, t) for t in DERIVED} == before

    r = runner.invoke(main, ["--atlas", str(atlas.path), "ingest", str(other), "--id", SAE0, "--hook", "blocks.0.hook_resid_post", "--replace"])
    assert r.exit_code == 0 and "1 replaced" in r.output, r.output
    for table, rows in before.items():
        assert _table(atlas.path, table) == [row for row in rows if not _touches(row, table, SAE0)], table

    # the SAE row and its features now describe the new weights
    sae = next(s for s in _table(atlas.path, "saes") if s["sae_id"] == SAE0)
    w = load_file(str(other / "sae_weights.safetensors"))
    assert sae["sha256"] != old["sha256"] and sae["index_file"] != old["index_file"] and sae["layer"] == 0
    assert (atlas.index_dir / sae["index_file"]).exists()
    with atlas.read() as con:
        norms, thresholds = zip(*con.execute("SELECT dec_norm, threshold FROM features WHERE sae_id = ? ORDER BY feature",
                                              [SAE0]).fetchall())
    np.testing.assert_allclose(norms, np.linalg.norm(w["W_dec"], axis=1), rtol=1e-6)
    np.testing.assert_array_equal(np.float32(thresholds), w["threshold"])

    # matching again computes the replaced SAE's pairs and skips every other one
    with atlas.read() as con:
        layer_pairs, sibling_pairs = select_pairs(con, "distance", distance=2), select_pairs(con, "siblings")
    s1 = run_match(atlas, layer_pairs, ["decoder_cos", "decoder_mse"], MatchParams())
    s2 = run_match(atlas, sibling_pairs, ["decoder_cos", "encoder_cos"], MatchParams())
    computed, skipped = s1.computed + s2.computed, s1.skipped + s2.skipped
    assert sorted(computed) == sorted(k for k in computed + skipped if SAE0 in k[:2])
    assert sorted(set(computed)) == sorted([(SAE0, SAE1, "decoder_cos"), (SAE0, SAE1, "decoder_mse"),
                                            (SAE0, SAE2, "decoder_cos"), (SAE0, SAE2, "decoder_mse"),
                                            (SAE0, SIB0, "decoder_cos"), (SAE0, SIB0, "encoder_cos")])
    # layer 3's features, two layers' drift from layer 1: fewer survive than from the true layer 0
    pairs = {(p["sae_a"], p["sae_b"], p["method"]): p for p in _table(atlas.path, "pair_stats")}
    old_frac = next(p for p in before["pair_stats"] if (p["sae_a"], p["sae_b"], p["method"]) == (SAE0, SAE1, "decoder_cos"))
    assert pairs[(SAE0, SAE1, "decoder_cos")]["matched_frac"] < old_frac["matched_frac"]
