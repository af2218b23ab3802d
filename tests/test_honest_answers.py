"""Answers that never mislead (issue 20): what was never computed is a 4xx naming the command to run, exports
outlive a job's collection, and a moved atlas is a 503 until it is back."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from atlas_api.app import create_app
from atlas_api.settings import Settings

SAE0 = "synth-resid0-w256-s0-A"


@pytest.fixture()
def copy(synth_atlas, tmp_path):
    return synth_atlas.copy_to(tmp_path / "atlas.duckdb")


@pytest.fixture(scope="module")
def client(synth_atlas):
    with TestClient(create_app(synth_atlas.path)) as c:
        yield c


@pytest.mark.parametrize("method, command", [("encoder_cos", "atlas match --pairs adjacent --method encoder_cos"),
                                             ("activation_corr", "atlas correlate --activations FOLDER")])
def test_lineage_with_a_method_never_run_on_the_stack_names_the_command(client, method, command):
    r = client.get(f"/api/saes/{SAE0}/features/5/lineage", params={"method": method})
    assert r.status_code == 404 and command in r.json()["error"], r.text
    assert client.get(f"/api/saes/{SAE0}/features/5/lineage", params={"method": "decoder_mse"}).status_code == 200


def test_orphans_of_an_sae_whose_siblings_were_never_matched_name_the_command(copy):
    with copy.write() as w:  # the sibling matches go (encoder_cos is only computed between siblings here)
        w.drop_parts("table_name = 'matches' AND method = 'encoder_cos'", [])
        w.con.execute("DELETE FROM pair_stats WHERE method = 'encoder_cos'")
    with TestClient(create_app(copy.path)) as c:
        r = c.get("/api/orphans", params={"sae": SAE0})
        assert r.status_code == 404 and "atlas match --pairs siblings" in r.json()["error"], r.text


def test_search_with_both_a_vector_and_a_feature_is_refused(client):
    r = client.post("/api/search", content=json.dumps({"vector": [1.0] * 512, "sae_id": SAE0, "feature": 5}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not both" in r.json()["error"], r.text


def test_an_export_keeps_its_files_while_a_later_job_collects(copy, monkeypatch):
    from atlas_api.export import parquet_stream, table_batches
    from atlas_api.state import AtlasState
    from atlas_api.settings import Settings

    monkeypatch.setenv("ATLAS_GC_GRACE_S", "0")  # a job removes dropped files at once (unless leased)
    state = AtlasState(copy.path, Settings())
    snap = state.snapshot()
    total = snap.cursor().execute("SELECT count(*) FROM matches").fetchone()[0]
    schema, batches = table_batches(snap, "matches", copy.dir)
    stream = parquet_stream(schema, batches)
    body = [next(stream)]
    with copy.write() as w:  # a later job drops every match file ...
        w.drop_parts("table_name = 'matches'", [])
    with copy.write():  # ... and the next one collects the dropped files
        pass
    body += list(stream)
    assert pq.read_table(io.BytesIO(b"".join(body))).num_rows == total
    with copy.write():  # the stream ended: its lease went, so now they go
        pass
    assert not list(copy.tables_dir.glob("matches/**/*.parquet"))
    state.close()


def test_a_moved_atlas_is_one_clear_503_and_the_server_recovers_after_migrate(synth_atlas, tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    served = synth_atlas.copy_to(tmp_path / "a" / "atlas.duckdb")
    other = synth_atlas.copy_to(tmp_path / "b" / "atlas.duckdb")
    with TestClient(create_app(served.path)) as c:
        assert c.get("/health").status_code == 200
        shutil.rmtree(served.dir)
        served.path.unlink()
        r = c.get(f"/api/saes/{SAE0}")
        assert r.status_code == 503 and "not there" in r.json()["error"] and r.headers["retry-after"], r.text
        other.path.rename(served.path)  # another atlas moved here: its views name the folder it came from
        other.dir.rename(served.dir)
        r = c.get(f"/api/saes/{SAE0}/features/5/lineage")
        assert r.status_code == 503 and "atlas migrate" in r.json()["error"], r.text
        out = CliRunner().invoke(main, ["--atlas", str(served.path), "migrate"])
        assert out.exit_code == 0, out.output
        assert c.get(f"/api/saes/{SAE0}/features/5/lineage").status_code == 200
        assert c.get("/health").status_code == 200


SAE1 = "synth-resid1-w256-s0-A"
SAE3 = "synth-resid3-w256-s0-A"
STACK = "synth-resid-w256-jumprelu-s0-A"
PATH_VALUES = {"sae_id": SAE0, "feature": 5, "stack": STACK, "sae_a": SAE0, "sae_b": SAE1}


def _method_routes(client) -> list[str]:
    """Every GET path of the OpenAPI document with a `method` parameter, its path parameters filled in."""
    spec = client.get("/schema/openapi.json").json()
    return [path.format(**PATH_VALUES) for path, ops in spec["paths"].items() for verb, op in ops.items()
            if verb == "get" and "method" in {p["name"] for p in op.get("parameters", [])}]


@pytest.mark.parametrize("method, command", [("activation_corr", "atlas correlate --activations FOLDER"),
                                             ("encoder_cos", "--method encoder_cos")])
def test_every_route_with_a_method_refuses_one_never_run_naming_the_command(client, method, command):
    """Issue 31: one check (atlas/queries/computed.py) behind every route that answers from computed pairs; on
    today's main pairs, layer-pairs, matrix, communities, flow, steering and the Neuronpedia lineage list answer 200
    from nothing. encoder_cos was run between siblings only, never along a stack."""
    routes = _method_routes(client)
    assert len(routes) >= 9, routes
    for url in routes:
        r = client.get(url, params={"method": method})
        assert r.status_code == 404, (url, r.status_code, r.text[:300])
        assert command in r.json()["error"], (url, r.json()["error"])
        assert client.get(url, params={"method": "decoder_cos"}).status_code == 200, url


def test_a_pair_never_matched_names_the_command_and_a_reversed_one_says_so(client):
    r = client.get(f"/api/pairs/{SAE0}/{SAE3}")  # layer distance 3: never matched here
    assert r.status_code == 404 and f"--pair {SAE0}:{SAE3}" in r.json()["error"], r.text
    r = client.get(f"/api/pairs/{SAE1}/{SAE0}")
    assert r.status_code == 404 and f"it was as {SAE0} -> {SAE1}" in r.json()["error"], r.text
    r = client.get(f"/api/neuronpedia/lists/pair/{SAE0}/{SAE3}")
    assert r.status_code == 404 and f"--pair {SAE0}:{SAE3}" in r.json()["error"], r.text
    assert client.get(f"/api/pairs/{SAE0}/{SAE1}").json()  # matched: its assigned matches


def test_width_and_sibling_answers_before_their_jobs_name_the_command(tmp_path):
    from click.testing import CliRunner

    from atlas_cli import main

    atlas = tmp_path / "w.duckdb"
    run = CliRunner().invoke
    r = run(main, ["--atlas", str(atlas), "synth", "--out", str(tmp_path / "synth"), "--d-sae", "64", "--d-in", "128",
                   "--layers", "1", "--seeds", "2", "--no-second-dataset", "--widths", "2x", "--seed", "5"])
    assert r.exit_code == 0, r.output
    narrow = "synth-resid0-w64-s0-A"
    with TestClient(create_app(atlas)) as c:
        for url, command in [(f"/api/saes/{narrow}/features/3/width-tree", "atlas match --pairs widths"),
                             ("/api/width-pairs", "atlas match --pairs widths"),
                             ("/api/consistency", "atlas match --pairs siblings"),
                             (f"/api/orphans?sae={narrow}", "atlas match --pairs siblings")]:
            r = c.get(url)
            assert r.status_code == 404 and command in r.json()["error"], (url, r.text)
        assert c.get("/api/width-pairs", params={"model": "gemma%"}).json() == []  # nothing to compute there
        assert run(main, ["--atlas", str(atlas), "match", "--pairs", "widths"]).exit_code == 0
        assert run(main, ["--atlas", str(atlas), "match", "--pairs", "siblings"]).exit_code == 0
        for url in (f"/api/saes/{narrow}/features/3/width-tree", "/api/width-pairs", "/api/consistency",
                    f"/api/orphans?sae={narrow}"):
            assert c.get(url).status_code == 200, url


ATLAS_ROUTES = [f"/api/saes/{SAE0}", f"/api/orphans?sae={SAE0}", f"/api/pairs/{SAE0}/{SAE1}",
                f"/api/search?sae_id={SAE0}&feature=5", f"/api/saes/{SAE0}/features/5",
                f"/api/saes/{SAE0}/features/5/lineage", f"/api/stacks/{STACK}/communities", f"/api/stacks/{STACK}/births-deaths",
                f"/api/saes/{SAE0}/features/5/steering", "/api/layer-pairs", "/api/export/matches.parquet",
                "/api/sql?sql=SELECT%20count(*)%20FROM%20matches", "/health"]


def _no_server_paths(r, root) -> None:
    assert str(root) not in r.text, r.text[:400]


def test_a_files_folder_moved_away_is_503_naming_it_and_nothing_is_made_at_the_old_place(copy, tmp_path):
    """Issue 31: with atlas.files/ moved away main answered 500 (orphans, pairs, search), 400 with the absolute
    table path (SQL) and a 200 header then an aborted stream (export), and re-created atlas.files/leases/ there,
    so moving the folder back failed."""
    with TestClient(create_app(copy.path, Settings(sql_workers=1))) as c:
        assert c.get(f"/api/saes/{SAE0}/features/5/lineage").status_code == 200
        away = tmp_path / "elsewhere.files"
        copy.dir.rename(away)
        for url in ATLAS_ROUTES:
            r = c.get(url)
            assert r.status_code == 503 and r.headers["retry-after"], (url, r.status_code, r.text[:300])
            assert "atlas.files/" in r.json()["error"] and r.json()["ok"] is False, (url, r.text)
            _no_server_paths(r, tmp_path)
        assert not copy.dir.exists()  # nothing made where the folder was
        away.rename(copy.dir)  # moved back: served again
        for url in ATLAS_ROUTES:
            assert c.get(url).status_code == 200, url


def _matches_file(atlas, a=SAE0, b=SAE1) -> str:
    with atlas.read() as con:
        return con.execute("SELECT file FROM parts WHERE table_name = 'matches' AND sae_a = ? AND sae_b = ? AND "
                           "method = 'decoder_cos'", [a, b]).fetchone()[0]


def test_a_deleted_table_file_and_its_index_are_503_naming_them(copy, tmp_path):
    """Issue 31: one matches file deleted made 6 routes answer 500 on main; its .idx too (after a restart), lineage
    and the card. Every route that reads it now names the file and `atlas migrate`; export checks its files
    before the 200 goes out."""
    rel = _matches_file(copy)
    parquet = copy.tables_dir / rel
    reads_it = [f"/api/pairs/{SAE0}/{SAE1}", f"/api/saes/{SAE0}/features/5/lineage", f"/api/orphans?sae={SAE1}",
                f"/api/stacks/{STACK}/communities", f"/api/layer-pairs?stack={STACK}", f"/api/stacks/{STACK}/births-deaths",
                f"/api/saes/{SAE0}/features/5/steering", "/api/export/matches.parquet",
                "/api/sql?sql=SELECT%20count(*)%20FROM%20matches"]
    parquet.unlink()
    with TestClient(create_app(copy.path, Settings(sql_workers=1))) as c:
        for url in reads_it:
            r = c.get(url)
            if r.status_code == 200:  # answered from the pair's edge index, which is still there
                assert "lineage" in url or "steering" in url, url
                continue
            assert r.status_code == 503, (url, r.status_code, r.text[:300])
            assert rel.split("/")[-1] in r.json()["error"] and "atlas migrate" in r.json()["error"], (url, r.text)
            _no_server_paths(r, tmp_path)
    parquet.with_suffix(".idx").unlink()
    with TestClient(create_app(copy.path, Settings(sql_workers=1))) as c:  # a restart: the index is not open
        for url in (f"/api/saes/{SAE0}/features/5/lineage", f"/api/saes/{SAE0}/features/5"):
            r = c.get(url)
            assert r.status_code == 503 and "atlas migrate" in r.json()["error"], (url, r.status_code, r.text[:300])
            _no_server_paths(r, tmp_path)
