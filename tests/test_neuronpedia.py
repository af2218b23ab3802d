"""Neuronpedia ids set after ingest, lists out (lineage, orphans, pair) with their quick-list URL, and an
atlas whose weights moved re-rooted with one command."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

from click.testing import CliRunner

from atlas_cli import main
from atlas.store import Atlas


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

    # the same lists over HTTP, and Neuronpedia's feature path to the explorer (browsers) or lineage (JSON)
    from litestar.testing import TestClient

    from atlas_api.app import create_app

    with TestClient(create_app(atlas)) as c:
        r = c.get("/api/neuronpedia/lists/lineage/synth-resid0-w64-s0-A/3")
        assert r.status_code == 200 and r.json() == lst
        r = c.get("/api/neuronpedia/lists/pair/synth-resid0-w64-s0-A/synth-resid1-w64-s0-A", params={"tau": 0.5})
        assert r.status_code == 200 and r.json()["items"] and r.json()["url"].startswith("https://www.neuronpedia.org/")
        assert c.get("/api/neuronpedia/lists/orphans/synth-resid1-w64-s0-A", params={"by": "seed"}).status_code == 200
        assert c.get("/api/neuronpedia/lists/orphans/nope").status_code == 404
        assert c.get("/api/neuronpedia/lists/lineage/synth-resid0-w64-s0-A/3", params={"tau": 2}).status_code == 400
        browser = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        r = c.get("/api/neuronpedia/synth/1-res-64/5", headers=browser, follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"] == "/#/feature/synth-resid1-w64-s0-A/5"
        r = c.get("/api/neuronpedia/synth/1-res-64/5", headers={"accept": "application/json"}, follow_redirects=False)
        assert r.headers["location"] == "/api/saes/synth-resid1-w64-s0-A/features/5/lineage"
        r = c.get("/api/neuronpedia/synth/1-res-64/5", headers={"accept": "application/json"})
        assert r.status_code == 200 and r.json()["root"]["feature"] == 5
        assert c.get("/api/neuronpedia/synth/9-res-64/5").status_code == 404

    # weights moved: match fails, one reroot command, match works again (by hash-checked reads)
    (tmp_path / "weights").rename(tmp_path / "moved")
    r = _cli(atlas, "match", "--pairs", "distance", "--distance", "2")
    assert r.exit_code == 2 and "are missing; if they moved, run `atlas saes reroot" in r.output, r.output
    r = _cli(atlas, "saes", "reroot", "weights", "elsewhere-that-exists-not")
    assert r.exit_code == 2
    r = _cli(atlas, "saes", "reroot", "nothing-here", "moved")
    assert r.exit_code == 2 and "no SAE source lies under this folder" in r.output
    r = _cli(atlas, "saes", "reroot", str(tmp_path / "weights"), "moved")
    with Atlas(atlas).read() as con:
        n = con.execute("SELECT count(*) FROM saes").fetchone()[0]
    assert r.exit_code == 0 and f"re-rooted {n} SAE sources" in r.output, r.output
    r = _cli(atlas, "match", "--pairs", "distance", "--distance", "2")
    assert r.exit_code == 0 and "matched" in r.output and "matched 0 " not in r.output, r.output
