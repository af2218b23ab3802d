"""The HTTP API on the planted-truth atlas: answers equal the query functions and SQL; errors are one envelope."""

from __future__ import annotations

import io
from dataclasses import fields

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from atlas_api.app import create_app
from atlas_api.settings import Settings
from atlas.queries import lineage, orphans
from atlas.errors import QueryError
from atlas.store.snapshot import SERVING_CONFIG, Snapshot

STACK = "synth-resid-w256-jumprelu-s0-A"
SAE0 = "synth-resid0-w256-s0-A"


@pytest.fixture(scope="module")
def client(synth_atlas):
    app = create_app(synth_atlas.path, Settings(sql_time_limit_s=1.0, sql_max_rows=50, page_size=10))
    with TestClient(app) as c:
        yield c


def _reader(atlas):
    """The server holds the file open; in one process DuckDB shares it only with the same configuration."""
    return Snapshot(atlas.path)


def test_health_and_listing_with_pagination(client):
    assert client.get("/health").json()["saes"] == 16
    first = client.get("/api/saes").json()
    assert len(first["items"]) == 10 and first["next"]
    second = client.get("/api/saes", params={"cursor": first["next"]}).json()
    assert len(second["items"]) == 6 and second["next"] is None
    ids = [s["sae_id"] for s in first["items"] + second["items"]]
    assert len(set(ids)) == 16
    assert [s["stack"] for s in client.get("/api/stacks").json()][0] == STACK


def test_feature_card_and_lineage_match_the_query_functions(client, synth_atlas):
    card = client.get(f"/api/saes/{SAE0}/features/5").json()
    assert card["lineage_url"] == f"/api/saes/{SAE0}/features/5/lineage"
    best = next(m for m in card["matches"]["decoder_cos"] if m["layer"] == 1)
    assert best["direction"] == "out" and best["rank"] == 1 and best["assigned"]
    body = client.get(card["lineage_url"], params={"tau": 0.7, "max_skip": 1}).json()
    with _reader(synth_atlas) as con:
        expected = lineage(con, SAE0, 5)
    assert [(n["layer"], n["feature"]) for n in body["nodes"]] == [(n.layer, n.feature) for n in expected.nodes]
    assert body["lifespan"] == expected.lifespan


def test_orphans_and_layer_pairs_match_sql(client, synth_atlas):
    body = client.get("/api/orphans", params={"sae": SAE0}).json()
    with _reader(synth_atlas) as con:
        expected = orphans(con, SAE0)
        sql = con.execute("SELECT feature FROM feature_sharing(?) WHERE n_shared = 0", [SAE0]).fetchall()
    assert body["n_orphans"] == expected.n_orphans == len(sql)
    assert [o["feature"] for o in body["orphans"]] == [f for f, in sql][:10]
    pairs = client.get("/api/layer-pairs", params={"stack": STACK, "permutation_only": "true"}).json()["items"]
    sql_pairs = client.get("/api/sql", params={"sql": f"SELECT layer_a, layer_b FROM permutation_pairs(stack_ := '{STACK}') "
                                                      "ORDER BY ALL"}).json()
    assert [[p["layer_a"], p["layer_b"]] for p in pairs] == sql_pairs["rows"]
    m = client.get(f"/api/stacks/{STACK}/matrix", params={"stat": "mean_score"}).json()
    assert m["layers"] == [0, 1, 2, 3] and m["values"][1][2] > 0.9


def test_search_by_feature_and_vector(client):
    hits = client.get("/api/search", params={"sae_id": SAE0, "feature": 5, "k": 3}).json()
    assert len(hits) == 3 and hits[0]["layer"] == 1 and hits[0]["score"] > 0.95
    vec = [0.0] * 512
    vec[0] = 1.0
    post = client.post("/api/search", json={"vector": vec, "k": 2, "saes": [SAE0]})
    assert post.status_code == 200 and {h["sae_id"] for h in post.json()} == {SAE0}


# Each error names the offending value and says what would work; the wording is free to change.
@pytest.mark.parametrize("url, status, names", [
    ("/api/saes/nope", 404, ("'nope'", "/api/saes")),
    (f"/api/saes/{SAE0}/features/256", 404, ("256", "0..255")),
    (f"/api/saes/{SAE0}/features/1/lineage?direction=up", 400, ("direction", "'up'", "forward")),
    ("/api/orphans?sae=x", 404, ("'x'", "/api/saes")),
    ("/api/layer-pairs?min_frac=2", 400, ("min_frac", "1.0")),
    ("/api/stacks/none/matrix", 404, ("'none'", "/api/stacks")),
    ("/api/saes?cursor=%25%25", 400, ("cursor", "[0-9]")),
    ("/api/export/secrets.parquet", 404, ("secrets.parquet", "saes.parquet", "matches.parquet")),
])
def test_errors_are_one_envelope(client, url, status, names):
    r = client.get(url)
    assert r.status_code == status
    body = r.json()
    assert set(body) == {"ok", "error", "status"} and body["ok"] is False and body["status"] == status
    assert all(n in body["error"] for n in names), body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]


def test_bad_parameter_type_is_a_400_envelope(client):
    r = client.get("/api/layer-pairs", params={"min_frac": "lots"})
    assert r.status_code == 400 and r.json()["ok"] is False and "min_frac" in r.json()["error"]


HOSTILE = [
    ("COPY saes TO '/tmp/stolen.csv'", 403, "not COPY"),
    ("ATTACH '/tmp/other.duckdb' AS o", 403, "not ATTACH"),
    ("INSTALL httpfs", 403, "not LOAD"),
    ("LOAD httpfs", 403, "not LOAD"),
    ("SET threads = 64", 403, "not SET"),
    ("PRAGMA enable_profiling", 403, "not PRAGMA"),
    ("SELECT * FROM read_csv('/etc/passwd')", 403, "file system operations are disabled"),
    ("SELECT * FROM read_parquet('http://example.com/x.parquet')", 403, "disabled"),
    ("SELECT 1; DROP TABLE saes", 400, "one statement per request, got 2"),
    ("DELETE FROM saes", 403, "not DELETE"),
    ("CREATE TABLE x AS SELECT 1", 403, "not CREATE"),
    ("SELECT current_setting('lock_configuration') FROM (SELECT 1); ", 200, None),
    ("SELEC nonsense", 400, "SQL does not parse"),
]


@pytest.mark.parametrize("sql, status, fragment", HOSTILE)
def test_hostile_sql_is_refused_and_the_server_stays_up(client, sql, status, fragment):
    r = client.get("/api/sql", params={"sql": sql})
    assert r.status_code == status, r.text
    if fragment:
        assert r.json()["ok"] is False and fragment in r.json()["error"]
    assert client.get("/api/sql", params={"sql": "SELECT count(*) FROM saes"}).json()["rows"] == [[16]]


def test_runaway_query_is_stopped_by_the_time_limit(client):
    r = client.get("/api/sql", params={"sql": "SELECT sum(hash(i)) FROM range(20000000000) t(i)"})  # CPU, no memory
    assert r.status_code == 408
    body = r.json()
    assert (body["ok"], body["status"]) == (False, 408) and "1 s" in body["error"] and "LIMIT" in body["error"]
    assert client.get("/health").json()["ok"] is True


def test_sql_row_cap_formats_and_post(client):
    r = client.get("/api/sql", params={"sql": "SELECT * FROM range(100)", "_limit": 5}).json()
    assert r["rows"] == [[0], [1], [2], [3], [4]] and r["truncated"] is True and r["limit"] == 5
    capped = client.get("/api/sql", params={"sql": "SELECT * FROM range(100)"}).json()
    assert len(capped["rows"]) == 50 and capped["truncated"]
    capped_ask = client.get("/api/sql", params={"sql": "SELECT * FROM range(100)", "_limit": 51}).json()
    assert capped_ask["limit"] == 50 and len(capped_ask["rows"]) == 50 and capped_ask["truncated"]  # the cap wins
    csv_body = client.get("/api/sql", params={"sql": "SELECT 1 AS a, 'x' AS b", "_format": "csv"}).text
    assert csv_body.splitlines() == ["a,b", "1,x"]
    parquet = client.get("/api/sql", params={"sql": "SELECT 42 AS answer", "_format": "parquet"}).content
    assert pq.read_table(io.BytesIO(parquet)).to_pylist() == [{"answer": 42}]
    posted = client.post("/api/sql", json={"sql": "SELECT 2 AS two", "_limit": 1}).json()
    assert posted["rows"] == [[2]] and posted["truncated"] is False


def test_export_parquet(client):
    table = pq.read_table(io.BytesIO(client.get("/api/export/pair_stats.parquet").content))
    assert table.num_rows > 0 and "matched_frac" in table.column_names


def test_serving_connection_is_locked_down(synth_atlas, tmp_path):
    synth_atlas.copy_to(tmp_path / "copy.duckdb")
    con = Snapshot(tmp_path / "copy.duckdb", memory_limit="1GB", threads=1).con
    names = list(SERVING_CONFIG) + ["memory_limit", "threads", "lock_configuration"]
    s = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN (SELECT unnest(?))",
                         [names]).fetchall())
    assert s["enable_external_access"] == "false" and s["lock_configuration"] == "true"
    assert s["autoinstall_known_extensions"] == "false" and s["autoload_known_extensions"] == "false"
    assert s["python_enable_replacements"] == "false" and s["threads"] == "1"
    with pytest.raises(Exception, match="configuration"):
        con.execute("SET enable_external_access = true")


def test_openapi_has_an_operation_id_on_every_route(client):
    spec = client.get("/schema/openapi.json").json()
    ops = [op for path in spec["paths"].values() for op in path.values()]
    assert len(ops) >= 15 and all(op.get("operationId") for op in ops)


def test_openapi_version_is_the_package_version(client):
    import atlas

    assert client.get("/schema/openapi.json").json()["info"]["version"] == atlas.__version__


def test_every_setting_is_documented():
    for f in fields(Settings):
        assert len(f.metadata.get("help", "")) > 10, f.name


def test_neuronpedia_link_redirects_to_lineage(tmp_path, family):
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.sources import read_sae
    from atlas.store import Atlas

    atlas = Atlas(tmp_path / "np.duckdb")
    ingest(atlas, [lambda: read_sae(family[1][0], neuronpedia_id="synth/0-res-256")])
    with TestClient(create_app(atlas.path)) as c:
        card = c.get(f"/api/saes/{SAE0}/features/7").json()
        assert card["neuronpedia_url"] == "https://www.neuronpedia.org/synth/0-res-256/7"
        assert card["neuronpedia_embed"].endswith("/7?embed=true")
        r = c.get("/api/neuronpedia/synth/0-res-256/7", follow_redirects=False)
        assert r.status_code in (301, 302, 307) and r.headers["location"] == f"/api/saes/{SAE0}/features/7/lineage"


_KEYWORDS = ["SELECT 1", "COPY saes TO 'x'", "ATTACH 'x'", "INSTALL x", "PRAGMA version", "SET threads=1",
             "CREATE TABLE t(a INT)", "DROP TABLE saes", "WITH a AS (SELECT 1) SELECT * FROM a", "EXPLAIN SELECT 1"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_KEYWORDS), st.text(max_size=20)), min_size=1, max_size=3).map(";".join))
def test_sql_guard_lets_through_only_one_read_statement(sql):
    """Property: whatever the text, the guard either refuses it or it is exactly one SELECT/EXPLAIN."""
    import duckdb

    from atlas_api.sqlguard import check_statement

    con = duckdb.connect()
    try:
        check_statement(con, sql)
    except QueryError:
        return
    statements = con.extract_statements(sql)
    assert len(statements) == 1 and statements[0].type.name in ("SELECT", "EXPLAIN")
