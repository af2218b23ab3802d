"""The notebook API: README's "From Python" block, run as written on a planted family, gives the planted answers
and the records the HTTP API returns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pyarrow.parquet as pq
import pytest

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


def test_reader_answers_are_the_api_records(readme, planted):
    from litestar.testing import TestClient

    from api.app import create_app

    root, _ = planted
    a = readme["a"]
    with TestClient(create_app(root / "atlas.duckdb")) as client:
        for url, answer in [
                (f"/api/saes/{_ids(1)}/features/5/lineage", a.lineage(_ids(1), 5)),
                (f"/api/saes/{_ids(1)}/features/5", a.feature(_ids(1), 5)),
                (f"/api/saes/{_ids(1)}", a.sae(_ids(1))),
                (f"/api/stacks/{STACK}/flow", a.births_deaths(STACK)),
                ("/api/stacks", a.stacks())]:
            assert client.get(url).json() == msgspec.to_builtins(answer), url


def test_empty_answers_keep_their_columns(readme):
    a = readme["a"]
    assert list(a.find("no such label").to_pandas().columns) == ["sae_id", "feature", "layer", "label"]
    assert a.sql("SELECT 1 AS x WHERE false").to_arrow().column_names == ["x"]


def test_import_atlas_stays_light():
    code = "import sys, atlas; print(sorted(m for m in ('duckdb', 'pyarrow', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
