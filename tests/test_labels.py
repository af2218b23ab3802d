"""Neuronpedia bulk exports become labels and stats that the API and lineage show."""

from __future__ import annotations

import gzip
import json

import pytest

from atlas.queries import lineage
from atlas.queries.records import NotFound
from atlas.store import Atlas
from ingest.jobs.ingest import ingest
from ingest.jobs.labels import import_labels
from ingest.sources import read_sae

SAE0 = "synth-resid0-w256-s0-A"


def test_import_explanations_and_features(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    ingest(atlas, [lambda: read_sae(family[1][0], neuronpedia_id="synth/0-res-256")])
    root = tmp_path / "v1" / "synth" / "0-res-256"
    (root / "explanations").mkdir(parents=True)
    (root / "features").mkdir()
    with gzip.open(root / "explanations" / "batch-0.jsonl.gz", "wt") as f:
        for i, text in [(3, "legal contracts"), (5, "the word 'the'"), ("7", "Python decorators")]:
            f.write(json.dumps({"modelId": "synth", "layer": "0-res-256", "index": i, "description": text}) + "\n")
    (root / "features" / "batch-0.jsonl").write_text(
        json.dumps({"index": "3", "frac_nonzero": 0.012, "maxActApprox": 7.5}) + "\n")
    s = import_labels(atlas, tmp_path / "v1")
    assert s.files == 2 and s.labels == {SAE0: 3} and s.stats == {SAE0: 1}
    with atlas.read() as con:
        rows = con.execute("SELECT feature, label, density, max_act FROM features WHERE label IS NOT NULL "
                           "ORDER BY feature", []).fetchall()
        assert [(f, lab) for f, lab, _, _ in rows] == [(3, "legal contracts"), (5, "the word 'the'"), (7, "Python decorators")]
        assert rows[0][2] == pytest.approx(0.012) and rows[0][3] == pytest.approx(7.5)
        lin = lineage(con, SAE0, 5)
        assert lin.root.label == "the word 'the'"
        assert lin.root.neuronpedia_url == "https://www.neuronpedia.org/synth/0-res-256/5"


def test_unknown_source_is_refused(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    ingest(atlas, [lambda: read_sae(family[1][0])])
    d = tmp_path / "v1" / "gpt2-small" / "5-res-jb" / "explanations"
    d.mkdir(parents=True)
    (d / "b.jsonl").write_text('{"index": 1, "description": "x"}\n')
    with pytest.raises(NotFound, match="no SAE has neuronpedia_id 'gpt2-small/5-res-jb'"):
        import_labels(atlas, tmp_path / "v1")
    assert import_labels(atlas, tmp_path / "v1", sae_id=SAE0).labels == {SAE0: 1}
