"""Neuronpedia ids set after ingest, lists out (lineage, orphans, pair) with their quick-list URL, and an
atlas whose weights moved re-rooted with one command."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

from click.testing import CliRunner

from atlas.cli import main


def _cli(atlas, *args):
    r = CliRunner().invoke(main, ["--atlas", str(atlas), *args])
    return r


def test_neuronpedia_ids_lists_and_reroot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    atlas = tmp_path / "a.duckdb"
    r = _cli(atlas, "synth", "--out", "weights", "--layers", "3", "--d-in", "128", "--d-sae", "64", "--seeds", "2",
             "--no-second-dataset")
    assert r.exit_code == 0, r.output
    assert _cli(atlas, "match", "--pairs", "adjacent").exit_code == 0
    assert _cli(atlas, "match", "--pairs", "siblings").exit_code == 0
    for layer in range(3):
        r = _cli(atlas, "saes", "set", f"synth-resid{layer}-w64-s0-A", "--neuronpedia-id", f"synth/{layer}-res-64")
        assert r.exit_code == 0 and f"neuronpedia_id = synth/{layer}-res-64" in r.output, r.output
    r = _cli(atlas, "saes", "set", "nope", "--neuronpedia-id", "a/b")
    assert r.exit_code == 2 and "unknown SAE 'nope'" in r.output
    r = _cli(atlas, "saes", "set", "synth-resid0-w64-s0-A", "--neuronpedia-id", "no-slash")
    assert r.exit_code == 2 and "expected modelId/sourceId" in r.output

    r = _cli(atlas, "neuronpedia", "lineage", "synth-resid0-w64-s0-A", "3", "--json")
    assert r.exit_code == 0, r.output
    lst = json.loads(r.output)
    assert lst["items"][0] == {"modelId": "synth", "layer": "0-res-64", "index": "3", "description": "layer 0"}
    assert [i["layer"] for i in lst["items"]] == sorted(i["layer"] for i in lst["items"])
    features = json.loads(parse_qs(urlparse(lst["url"]).query)["features"][0])
    assert lst["url"].startswith("https://www.neuronpedia.org/quick-list/?name=") and features == lst["items"]
    r = _cli(atlas, "neuronpedia", "pair", "synth-resid0-w64-s0-A", "synth-resid1-w64-s0-A")
    assert r.exit_code == 0 and "https://www.neuronpedia.org/quick-list/" in r.output, r.output
    r = _cli(atlas, "neuronpedia", "orphans", "synth-resid1-w64-s0-A", "--json")
    assert r.exit_code == 0, r.output
    assert all(i["description"].startswith("orphan") for i in json.loads(r.output)["items"])
    r = _cli(atlas, "neuronpedia", "pair", "synth-resid0-w64-s1-A", "synth-resid1-w64-s1-A")
    assert r.exit_code == 2 and "no features with a Neuronpedia id" in r.output

    # weights moved: match fails, one reroot command, match works again (by hash-checked reads)
    (tmp_path / "weights").rename(tmp_path / "moved")
    r = _cli(atlas, "match", "--pairs", "distance", "--distance", "2")
    assert r.exit_code == 2 and "are missing; if they moved, run `atlas saes reroot" in r.output, r.output
    r = _cli(atlas, "saes", "reroot", "weights", "elsewhere-that-exists-not")
    assert r.exit_code == 2
    r = _cli(atlas, "saes", "reroot", "nothing-here", "moved")
    assert r.exit_code == 2 and "no SAE source lies under this folder" in r.output
    r = _cli(atlas, "saes", "reroot", str(tmp_path / "weights"), "moved")
    assert r.exit_code == 0 and "re-rooted 6 SAE sources" in r.output, r.output
    r = _cli(atlas, "match", "--pairs", "distance", "--distance", "2")
    assert r.exit_code == 0 and "matched 2 pair-methods" in r.output, r.output
