"""Neuronpedia bulk exports become labels and stats that the API and lineage show."""

from __future__ import annotations

import gzip
import json

import pytest

from atlas.queries import lineage
from atlas.errors import NotFound
from atlas.store import Atlas
from atlas_ingest.jobs.ingest import ingest
from atlas_ingest.jobs.labels import import_labels
from atlas_ingest.sources import read_sae

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


def _expl(i, text, explainer=None, model="synth", layer="0-res-256"):
    row = {"modelId": model, "layer": layer, "index": str(i), "description": text}
    if explainer:
        row["explanationModelName"] = explainer
    return row


def test_real_export_layouts_explainers_and_examples(tmp_path, family):
    """explanations/ synced alone, explanations-<explainer>/ folders, the export API's JSON array and
    activations/: rows go by their own modelId/layer, one explainer per SAE, the count is features labelled."""
    from click.testing import CliRunner

    from atlas_cli import main

    atlas = Atlas(tmp_path / "a.duckdb")
    ingest(atlas, [lambda: read_sae(family[1][0]), lambda: read_sae(family[1][1])])
    sae1 = next(s for s in (read_sae(f).meta.sae_id for f in family[1][1:2]))
    runner = CliRunner()
    r = runner.invoke(main, ["--atlas", str(atlas.path), "saes", "set", SAE0, "--neuronpedia-id", "synth/0-res-256"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["--atlas", str(atlas.path), "saes", "set", sae1, "--neuronpedia-id", "synth/1-res-256"])
    assert r.exit_code == 0, r.output

    # explanations/ synced alone, in a folder whose names say nothing: rows carry modelId/layer
    alone = tmp_path / "sync" / "explanations"
    alone.mkdir(parents=True)
    with gzip.open(alone / "batch-0.jsonl.gz", "wt") as f:
        for row in [_expl(1, "one"), _expl(2, "two"), _expl(2, "two again"), _expl(4, "four", layer="1-res-256")]:
            f.write(json.dumps(row) + "\n")
    r = runner.invoke(main, ["--atlas", str(atlas.path), "labels", "import", str(alone)])
    assert r.exit_code == 0, r.output
    assert f"{SAE0}: 2 features labelled" in r.output and f"{sae1}: 1 features labelled" in r.output
    assert "imported 1 files: 3 features labelled" in r.output

    # two explainers in explanations-<explainer>/ folders: the fuller one wins unless --explainer says
    tree = tmp_path / "v1" / "synth" / "0-res-256"
    (tree / "explanations-gpt-4o-mini").mkdir(parents=True)
    (tree / "explanations-claude").mkdir(parents=True)
    (tree / "explanations-gpt-4o-mini" / "b.jsonl").write_text(
        "".join(json.dumps({"index": i, "description": f"gpt {i}"}) + "\n" for i in (1, 2, 3)))
    (tree / "explanations-claude" / "b.jsonl").write_text(
        "".join(json.dumps({"index": i, "description": f"claude {i}"}) + "\n" for i in (3, 9)))
    s = import_labels(atlas, tmp_path / "v1")
    assert s.labels == {SAE0: 4} and s.explainers == {SAE0: "gpt-4o-mini"}
    with atlas.read() as con:
        got = dict(con.execute("SELECT feature, label FROM features WHERE sae_id = ? AND feature IN (1, 2, 3, 9)",
                               [SAE0]).fetchall())
    assert got == {1: "gpt 1", 2: "gpt 2", 3: "gpt 3", 9: "claude 9"}
    s = import_labels(atlas, tmp_path / "v1", explainer="claude")
    assert s.labels == {SAE0: 2}
    with pytest.raises(Exception, match="no explanations by 'nobody'; found: claude, gpt-4o-mini"):
        import_labels(atlas, tmp_path / "v1", explainer="nobody")

    # the explanation export API's JSON array, and top activations from activations/
    api = tmp_path / "export.json"
    api.write_text(json.dumps([_expl(7, "seven", "gpt-4o"), _expl(8, "eight", "gpt-4o", layer="1-res-256")]))
    assert import_labels(atlas, api).labels == {SAE0: 1, sae1: 1}
    acts = tmp_path / "v1b" / "synth" / "1-res-256" / "activations"
    acts.mkdir(parents=True)
    (acts / "batch-0.jsonl").write_text(json.dumps({"modelId": "synth", "layer": "1-res-256", "index": 8,
                                                    "tokens": ["the", " cat", " sat"], "values": [0, 2.5, 0.1],
                                                    "maxValue": 2.5, "maxValueTokenIndex": 1}) + "\n")
    assert import_labels(atlas, tmp_path / "v1b").examples == {sae1: 1}
    with atlas.read() as con:
        assert con.execute("SELECT feature, tokens, highlight, activation FROM examples WHERE sae_id = ?",
                           [sae1]).fetchall() == [(8, ["the", " cat", " sat"], 1, 2.5)]


def test_token_labels_pick_the_tokens_a_feature_fires_on_beyond_their_corpus_share():
    """Planted stream of 6000 tokens over ids 0..9 (id 0 half of them, id 7 a twentieth): feature 0 fires on every
    id 7 and on a few id 0 (lift of 7: 20 × its share of 0's firings), feature 1 fires everywhere with its top at
    position 100 (no token tells it apart: labelled by context), feature 2 never fires (no label), feature 3 fires
    twice on id 9 (under the support floor: context)."""
    import numpy as np
    import torch

    from atlas_ingest.token_labels import firing_counts, lift_labels

    rng = np.random.default_rng(0)
    ids = rng.choice(10, 6000, p=[0.5, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0, 0]).astype(np.int64)
    ids[[10, 20]] = 9
    doc = np.arange(6000) // 300
    acts = np.zeros((6000, 4), np.float32)
    acts[ids == 7, 0] = 1.0
    acts[np.nonzero(ids == 0)[0][:10], 0] = 0.5
    acts[:, 1] = 0.1
    acts[100, 1] = 5.0
    acts[[10, 20], 3] = 1.0
    x = torch.from_numpy(acts)  # the "encoder" is the identity: these are the feature activations
    words = lambda toks: [f"t{t}" for t in toks]  # noqa: E731
    feats, toks, counts, n_f, top, at = firing_counts(lambda chunk: chunk, x, ids, 4, chunk=1000)
    assert n_f.tolist() == [int((ids == 7).sum()) + 10, 6000, 0, 2] and at[1] == 100 and top[1] == 5.0
    labels = lift_labels(feats, toks, counts, n_f, at, ids, doc, words)
    n7 = int((ids == 7).sum())
    lift7 = (n7 / (n7 + 10)) / (n7 / 6000)
    assert lift7 > 10 and labels[0] == f"“t7” ×{lift7:.0f}"  # a single token: the ids of 0 are below its lift
    assert labels[1] == "context “" + " ".join(f"[t{ids[100]}]" if i == 100 else f"t{ids[i]}" for i in range(97, 103)) + "”"
    assert 2 not in labels
    assert labels[3].startswith("context “")
