"""Routes the browser walk does not cover, over HTTP on the planted-truth atlas: /api/pairs, a stack's
/births-deaths and /communities, and /api/features (label search). Answers are checked against ground truth."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from litestar.testing import TestClient

from atlas_api.app import create_app
from atlas_cli import main

from .conftest import TINY, planted_flow

STACK = "synth-resid-w256-jumprelu-s0-A"
SAES = [f"synth-resid{layer}-w256-s0-A" for layer in range(TINY.n_layers)]
LABELS = {3: "legal contracts", 5: "the word 'the'", 7: "Python decorators", 9: "contract law citations"}


@pytest.fixture(scope="module")
def client(synth_atlas, tmp_path_factory):
    """The planted atlas (copied: labels are written into it) with four Neuronpedia labels on layer 0."""
    root = tmp_path_factory.mktemp("routes")
    path = root / "atlas.duckdb"
    synth_atlas.copy_to(path)
    export = root / "v1" / "synth" / "0-res-256" / "explanations"
    export.mkdir(parents=True)
    (export / "batch-0.jsonl").write_text("".join(
        json.dumps({"modelId": "synth", "layer": "0-res-256", "index": i, "description": text}) + "\n"
        for i, text in LABELS.items()))
    r = CliRunner().invoke(main, ["--atlas", str(path), "labels", "import", str(root / "v1"), "--sae", SAES[0]])
    assert r.exit_code == 0, r.output
    with TestClient(create_app(path)) as c:
        yield c


def _carries(truth, a, b):
    return {(t["feature_a"], t["feature_b"]) for t in truth if t["sae_a"] == a and t["sae_b"] == b and t["kind"] == "carry"}


def test_pairs_lists_the_assignment_best_first(client, truth):
    rows = client.get(f"/api/pairs/{SAES[0]}/{SAES[1]}", params={"limit": 1000}).json()
    pairs = {(r["feature_a"], r["feature_b"]) for r in rows}
    assert _carries(truth, SAES[0], SAES[1]) <= pairs  # every planted carry is in the assignment
    assert len(pairs) == len(rows) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # one-to-one
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["rank"] >= 1 for r in rows)
    assert {r["score"] > 0.95 for r in rows if (r["feature_a"], r["feature_b"]) in _carries(truth, SAES[0], SAES[1])} == {True}
    top = client.get(f"/api/pairs/{SAES[0]}/{SAES[1]}", params={"limit": 5}).json()
    assert top == rows[:5]
    mse = client.get(f"/api/pairs/{SAES[0]}/{SAES[1]}", params={"method": "decoder_mse", "limit": 1000}).json()
    assert [r["score"] for r in mse] == sorted(r["score"] for r in mse)  # MSE: lower is better, first
    assert _carries(truth, SAES[0], SAES[1]) <= {(r["feature_a"], r["feature_b"]) for r in mse}
    missing = client.get(f"/api/pairs/{SAES[0]}/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_flow_counts_the_planted_births_and_deaths(client, truth):
    body = client.get(f"/api/stacks/{STACK}/births-deaths", params={"tau": 0.8}).json()
    assert [(r["layer"], r["births"], r["deaths"]) for r in body] == planted_flow(truth, SAES, TINY.d_sae)
    assert [r["sae_id"] for r in body] == SAES
    lenient = client.get(f"/api/stacks/{STACK}/births-deaths", params={"tau": 0.3}).json()  # a lower bar keeps more alive
    assert all(lo["deaths"] < hi["deaths"] for lo, hi in zip(lenient[:-1], body[:-1]))
    r = client.get("/api/stacks/nope/births-deaths")
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_communities_hold_the_planted_chains(client, truth):
    body = client.get(f"/api/stacks/{STACK}/communities", params={"limit": 1000}).json()
    members = {tuple(m) for c in body for m in c["members"]}
    chain = [(SAES[0], next(iter(sorted(_carries(truth, SAES[0], SAES[1]))))[0])]
    for a, b in zip(SAES, SAES[1:]):
        nxt = [fb for fa, fb in _carries(truth, a, b) if fa == chain[-1][1]]
        if not nxt:
            break
        chain.append((b, nxt[0]))
    assert len(chain) >= 2
    home = next(c for c in body if [chain[0][0], chain[0][1]] in c["members"])
    assert [tuple(m) for m in home["members"]] == chain and home["size"] == len(chain)
    assert len(members) == sum(c["size"] for c in body)  # disjoint
    assert len(client.get(f"/api/stacks/{STACK}/communities", params={"limit": 3}).json()) == 3
    big = client.get(f"/api/stacks/{STACK}/communities", params={"min_size": TINY.n_layers, "limit": 1000}).json()
    assert big and all(c["size"] >= TINY.n_layers for c in big) and len(big) < len(body)


def test_features_finds_labels(client):
    hits = client.get("/api/features", params={"label": "contract"}).json()
    assert [(h["sae_id"], h["feature"], h["label"]) for h in hits] == [
        (SAES[0], 3, "legal contracts"), (SAES[0], 9, "contract law citations")]
    assert client.get("/api/features", params={"label": "CONTRACT", "limit": 1}).json() == hits[:1]
    assert client.get("/api/features", params={"label": "zebra"}).json() == []
    r = client.get("/api/features", params={"label": " "})
    assert r.status_code == 400 and r.json()["ok"] is False


@pytest.mark.parametrize("path", ["/api/sql", "/api/search", "/health", f"/api/saes/{SAES[0]}"])
def test_options_allow_names_the_methods_a_405_names(client, path):
    """Issue 31: Litestar's own OPTIONS answer listed only the handlers registered before it (OPTIONS /api/sql:
    `GET, OPTIONS`; its 405: `POST, GET, OPTIONS`)."""
    allow = client.options(path).headers["allow"]
    refused = client.request("PATCH", path)
    assert refused.status_code == 405
    assert sorted(allow.split(", ")) == sorted(refused.headers["allow"].split(", ")), (allow, refused.headers["allow"])
