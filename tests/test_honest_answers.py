"""Answers that never mislead (issue 20): what was never computed is a 4xx naming the command to run, exports
outlive a job's collection, and a moved atlas is a 503 until it is back."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from api.app import create_app

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
    from api.export import parquet_stream, table_batches
    from api.state import AtlasState
    from api.settings import Settings

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

    from cli import main

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
