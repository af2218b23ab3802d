"""The notebook API (atlas.open): README's "From Python" block, run as written on a planted family, gives the planted
answers; every data route of the HTTP API has its method, answering the same records; graphs, decoder rows and
sae_lens SAEs come out of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from atlas.store import Atlas
from atlas.synth import GROUND_TRUTH, SynthConfig, generate

from .conftest import build_atlas, planted_flow

ROOT = Path(__file__).resolve().parent.parent
# `atlas synth`'s names (d_sae 512), fewer layers and siblings to stay quick
CONFIG = SynthConfig(d_in=512, d_sae=512, n_layers=3, n_seeds=2, second_dataset=True, seed=3)
STACK = "synth-resid-w512-jumprelu-s0-A"


def _ids(layer: int) -> str:
    return f"synth-resid{layer}-w512-s0-A"


def readme_block() -> str:
    """The first Python block of README's "From Python" section."""
    section = re.search(r"^## From Python\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("reader")
    build_atlas(root / "atlas.duckdb", generate(CONFIG, root / "synth"))
    return root, pq.read_table(root / "synth" / GROUND_TRUTH).to_pylist()


@pytest.fixture(scope="module")
def readme(planted):
    root, _ = planted
    cwd = Path.cwd()
    ns: dict = {}
    try:
        os.chdir(root)  # the block opens "atlas.duckdb", as in the folder `atlas synth` ran in
        exec(compile(readme_block(), "README.md (From Python)", "exec"), ns)
    finally:
        os.chdir(cwd)
    yield ns
    ns["a"].close()


def test_readme_block_recovers_the_planted_lineage(readme, planted):
    _, truth = planted
    lin, edges = readme["lin"], readme["edges"]
    stack = {_ids(layer) for layer in range(CONFIG.n_layers)}
    kinds = {(t["sae_a"], t["feature_a"], t["sae_b"], t["feature_b"]): t["kind"] for t in truth
             if t["sae_a"] in stack and t["kind"] in ("carry", "split", "merge")}
    nodes = {(n.sae_id, n.feature) for n in lin.nodes}
    adjacent = {(e.sae_a, e.feature_a, e.sae_b, e.feature_b): e.kind for e in lin.edges if e.gap == 0}
    assert adjacent and set(adjacent) <= set(kinds)  # every edge is a planted one
    carried = {k for k, kind in kinds.items() if kind == "carry" and k[:2] in nodes}
    assert carried and all(adjacent.get(k) == "carry" for k in carried)  # the planted permutation, recovered
    assert len(edges) == len(lin.edges) and set(edges["kind"]) <= {"carry", "split", "merge", "gap"}
    assert (lin.root.sae_id, lin.root.feature) == (_ids(1), 5) and lin.summary


def test_readme_block_answers_the_other_questions(readme, planted):
    _, truth = planted
    assert {(r.layer_a, r.layer_b) for r in readme["perm"].itertuples()} == {(0, 1), (1, 2)}
    flow = readme["flow"].to_pylist()
    assert [(r["layer"], r["births"], r["deaths"]) for r in flow] == planted_flow(
        truth, [_ids(layer) for layer in range(CONFIG.n_layers)], CONFIG.d_sae)
    orphans = readme["orphans"]
    assert 0 < len(orphans) < CONFIG.d_sae and (orphans["n_shared"] == 0).all()
    hits = readme["hits"]
    assert len(hits) == 5 and list(hits["score"]) == sorted(hits["score"], reverse=True)
    assert not ((hits["sae_id"] == _ids(1)) & (hits["feature"] == 5)).any()
    assert readme["saes"]["saes"].sum() == 3 * CONFIG.n_layers


NOT_DATA = {"health"}
"""Routes that answer about the server, not the atlas."""


@pytest.fixture(scope="module")
def client(planted):
    from litestar.testing import TestClient

    from atlas_api.app import create_app

    root, _ = planted
    with TestClient(create_app(root / "atlas.duckdb")) as c:
        yield c


def test_every_data_route_has_a_notebook_method(client):
    """Walks the API's route table: each operation (but NOT_DATA) is answered by a Notebook method, and every method
    that says it answers a route names one that exists."""
    from atlas.notebook import ROUTES, Notebook

    ops = {op["operationId"] for path in client.app.openapi_schema.to_schema()["paths"].values()
           for op in path.values() if isinstance(op, dict) and "operationId" in op}
    assert len(ops) >= 25
    missing = sorted(ops - NOT_DATA - set(ROUTES))
    assert not missing, f"routes without a notebook method (atlas/notebook.py, @answers): {missing}"
    assert set(ROUTES) <= ops and all(callable(getattr(Notebook, m, None)) for m in ROUTES.values())


def test_notebook_answers_are_the_api_records(readme, client):
    a = readme["a"]
    sae, other = _ids(1), _ids(2)
    sibling = "synth-resid1-w512-s1-A"
    for url, answer in [
            (f"/api/saes/{sae}/features/5/lineage", a.lineage(sae, 5)),
            (f"/api/saes/{sae}/features/5/lineage?method=decoder_mse&direction=forward",
             a.lineage(sae, 5, method="decoder_mse", direction="forward")),
            (f"/api/saes/{sae}/features/5/lineage?tau=0.5&max_skip=0", a.lineage(sae, 5, tau=0.5, max_skip=0)),
            (f"/api/saes/{sae}/features/5/steering", a.steering(sae, 5)),
            (f"/api/saes/{sae}/features/5", a.feature(sae, 5)),
            (f"/api/saes/{sae}", a.sae(sae)),
            (f"/api/stacks/{STACK}/births-deaths", a.births_deaths(STACK)),
            (f"/api/stacks/{STACK}/communities?tau=0.8&limit=1000", a.communities(STACK, tau=0.8)),
            (f"/api/stacks/{STACK}/matrix", a.matrix(STACK)),
            (f"/api/pairs/{sae}/{other}", a.pair(sae, other)),
            ("/api/sibling-groups", a.sibling_groups()),
            ("/api/stacks", a.stacks()),
            (f"/api/layer-pairs?stack={STACK}", {"items": a.layer_pairs(STACK), "min_frac": 0.9, "min_score": 0.9,
                                                  "method": "decoder_cos"}),
            (f"/api/search?sae_id={sae}&feature=5&k=4", a.search(sae, 5, k=4)),
            (f"/api/neuronpedia/lists/pair/{sae}/{sibling}", a.neuronpedia_pair(sae, sibling)),
            (f"/api/neuronpedia/lists/lineage/{sae}/5", a.neuronpedia_lineage(sae, 5))]:
        assert client.get(url).json() == msgspec.json.decode(msgspec.json.encode(answer)), url
    o = client.get(f"/api/orphans?sae={sae}").json()
    assert o["n_orphans"] == a.orphans(sae).n_orphans and o["orphans"] == msgspec.to_builtins(a.orphans(sae).orphans)[:100]


def test_a_lineage_is_a_networkx_graph(readme):
    lin = readme["a"].lineage(_ids(1), 5)
    g = lin.to_networkx()
    assert set(g.nodes) == {(n.sae_id, n.feature) for n in lin.nodes}
    assert {(u, v, d["kind"]) for u, v, d in g.edges(data=True)} == \
        {((e.sae_a, e.feature_a), (e.sae_b, e.feature_b), e.kind) for e in lin.edges}
    assert g.nodes[(lin.root.sae_id, lin.root.feature)]["layer"] == lin.root.layer


def test_decoder_rows_and_sae_lens_saes_are_the_files_weights(readme, planted, tmp_path):
    """Decoder rows equal W_dec of the SAE's own file; sae_lens loads the SAE itself, the atlas checks it is the one it
    matched, and a subset of features encodes as those features of the whole."""
    import torch
    from safetensors.numpy import load_file

    from atlas.errors import QueryError

    a = readme["a"]
    sae = _ids(1)
    source = a.saes(stack=STACK)[1].source
    w_dec = load_file(str(Path(source) / "sae_weights.safetensors"))["W_dec"]
    assert np.allclose(a.decoder(sae, [5, 3]), w_dec[[5, 3]], rtol=1e-5, atol=1e-6)
    whole = a.sae_lens(sae)
    assert np.allclose(whole.W_dec.detach().numpy(), w_dec)
    part = a.sae_lens(sae, [5, 3])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, CONFIG.d_in), np.float32)) + 3 * whole.W_dec[5]
    assert torch.allclose(part.encode(x), whole.encode(x)[:, [5, 3]], atol=1e-5)
    # the weights at its source changed since ingest (here: another SAE's file there): refused, not handed out
    import shutil

    import duckdb

    import atlas

    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    shutil.copy(Path(a.saes(stack=STACK)[2].source) / "sae_weights.safetensors", changed / "sae_weights.safetensors")
    copy = Atlas(planted[0] / "atlas.duckdb").copy_to(tmp_path / "copy.duckdb")
    with duckdb.connect(str(copy.path)) as con:
        con.execute("UPDATE saes SET source = ? WHERE sae_id = ?", [str(changed), sae])
    with atlas.open(copy.path) as b, pytest.raises(QueryError, match="changed since ingest"):
        b.sae_lens(sae)


def test_empty_answers_keep_their_columns(readme):
    a = readme["a"]
    assert list(a.find("no such label").to_pandas().columns) == ["sae_id", "feature", "layer", "label"]
    assert a.sql("SELECT 1 AS x WHERE false").to_arrow().column_names == ["x"]


def test_import_atlas_stays_light():
    code = "import sys, atlas; print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
