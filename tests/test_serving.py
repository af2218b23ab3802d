"""Serving while jobs run: the next request sees what a job published, and index files outlive --replace."""

from __future__ import annotations


import pytest
from litestar.testing import TestClient

from atlas_api.app import create_app
from atlas.store import Atlas

SAE0 = "synth-resid0-w256-s0-A"


@pytest.fixture(scope="module")
def new_weights(tmp_path_factory):
    """An SAE folder whose weights the atlas does not hold (another family seed), to store under SAE0's id."""
    from atlas.synth import SynthConfig, generate

    cfg = SynthConfig(d_in=512, d_sae=256, n_layers=1, n_seeds=1, second_dataset=False, seed=99)
    return generate(cfg, tmp_path_factory.mktemp("other"))[0]


@pytest.fixture()
def served(synth_atlas, tmp_path):
    """A private copy of the planted-truth atlas (jobs here must not change the shared one)."""
    return synth_atlas.copy_to(tmp_path / "atlas.duckdb")


def test_a_job_publishes_while_the_server_runs_and_the_next_request_sees_it(served, new_weights):
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.sources import read_sae

    with TestClient(create_app(served.path)) as c:
        before = c.get(f"/api/saes/{SAE0}").json()
        card = c.get(f"/api/saes/{SAE0}/features/5").json()
        assert card["matches"]["decoder_cos"] and before["pairs"]
        snap = c.get("/health").json()["snapshot"]
        # Another SAE's weights under SAE0's id: --replace drops its matches and writes a new index file.
        ingest(served, [lambda: read_sae(new_weights, sae_id=SAE0, layer=0)], replace=True)
        after = c.get(f"/api/saes/{SAE0}").json()
        assert after["sae"]["sha256"] != before["sae"]["sha256"] and after["pairs"] == {}
        assert c.get(f"/api/saes/{SAE0}/features/5").json()["matches"] == {}
        assert c.get("/health").json()["snapshot"] != snap
        lineage = c.get(f"/api/saes/{SAE0}/features/5/lineage").json()
        assert [n["sae_id"] for n in lineage["nodes"]] == [SAE0]


def test_replace_then_any_job_keeps_search_working(served, new_weights):
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.sources import read_sae

    with TestClient(create_app(served.path)) as c:
        assert c.get("/api/search", params={"sae_id": SAE0, "feature": 5, "k": 3}).status_code == 200
        old_files = set(p.name for p in served.index_dir.glob("*.faiss"))
        ingest(served, [lambda: read_sae(new_weights, sae_id=SAE0, layer=0)], replace=True)
        with served.write():  # any job: it drops index files no snapshot names
            pass
        # the server has not switched yet: its snapshot's files are leased, so the job kept them
        assert old_files <= set(p.name for p in served.index_dir.glob("*.faiss"))
        hits = c.get("/api/search", params={"sae_id": SAE0, "feature": 5, "k": 3})
        assert hits.status_code == 200, hits.text
        with served.write():
            pass
        for sae in (SAE0, "synth-resid1-w256-s0-A"):
            r = c.get("/api/search", params={"sae_id": sae, "feature": 5, "k": 3})
            assert r.status_code == 200 and len(r.json()) == 3, r.text
    # the server has stopped: its lease is gone, and the next job drops the replaced weights' index
    with served.write():
        pass
    with served.read() as con:
        named = {r[0] for r in con.execute("SELECT index_file FROM saes").fetchall()}
    assert {p.name for p in served.index_dir.glob("*.faiss")} == named


def test_feature_cards_from_table_files_equal_sql_over_the_views(synth_atlas, monkeypatch):
    """The card's candidates are point lookups in the table files; answering them by SQL over the `matches`
    view instead (today's reference) changes nothing."""
    from atlas.methods import method as method_info
    from atlas.store.edges import EdgeCatalog

    with TestClient(create_app(synth_atlas.path)) as c:
        snap = c.app.dependencies["atlas"].dependency().snapshot()
        urls = [f"/api/saes/{sae}/features/{f}" + q for sae in (SAE0, "synth-resid2-w256-s1-A") for f in (0, 5, 77, 255)
                for q in ("", "?top=8")]
        fast = [c.get(u).json() for u in urls]

        def outgoing(self, sae, feature, top):
            return snap.cursor().execute("SELECT method, sae_b, feature_b, score, rank, assigned, 'out' FROM matches "
                                         "WHERE sae_a = ? AND feature_a = ? AND rank <= ?", [sae, feature, top]).fetchall()

        def incoming(self, sae, feature):
            rows = snap.cursor().execute("SELECT method, sae_a, feature_a, score, rank, assigned, 'in' FROM matches "
                                         "WHERE sae_b = ? AND feature_b = ?", [sae, feature]).fetchall()
            floor = {r[0]: method_info(r[0]).index_floor for r in rows}
            return [r for r in rows if floor[r[0]] is None or r[3] >= floor[r[0]]]

        monkeypatch.setattr(EdgeCatalog, "outgoing", outgoing)
        monkeypatch.setattr(EdgeCatalog, "incoming", incoming)
        assert [c.get(u).json() for u in urls] == fast
        assert any(m["direction"] == d for card in fast for refs in card["matches"].values() for m in refs
                   for d in ("out", "in"))
