"""atlas_ingest.sources.load_stored, the one loader of stored SAEs (correlate, check-edges, steering --compare, the match
job's weights): the record as the atlas stores it (its hooks, the site they imply, shapes filled), or a one-line
refusal naming the SAE when the weights at its source changed since ingest or are gone."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from atlas.sae import SAEError
from atlas_ingest.sources import load_stored, read_sae
from tests.conftest import build_atlas


def test_load_stored_is_the_stored_record_and_refuses_other_weights(family, tmp_path):
    folders = [shutil.copytree(f, tmp_path / f"sae{i}") for i, f in enumerate(family[1][:2])]
    atlas = build_atlas(tmp_path / "atlas.duckdb", folders, match=False)
    with atlas.read() as snap:
        rows = snap.execute("SELECT sae_id, source, format, sha256, layer, hook, site, d_sae, d_in, arch FROM saes "
                            "ORDER BY layer").fetchall()
    (sid, source, fmt, sha, layer, hook, site, d_sae, d_in, arch), other = rows[0], rows[1]

    rec = load_stored(sid, source, fmt, sha)
    assert (rec.meta.sae_id, rec.meta.hook, rec.meta.site, rec.meta.layer) == (sid, hook, site, layer)
    assert (rec.meta.d_sae, rec.meta.d_in, rec.meta.arch, rec.meta.sha256) == (d_sae, d_in, arch, sha)
    np.testing.assert_array_equal(rec.weights.W_dec, read_sae(source).weights.W_dec)

    # the hooks the atlas stores win over the file's, and decide the site, as at ingest (read_sae's overrides);
    # None keeps the file's value
    moved = load_stored(sid, source, fmt, sha, layer=layer + 3, hook=f"blocks.{layer + 3}.hook_mlp_out", hook_out=None)
    assert (moved.meta.hook, moved.meta.hook_out, moved.meta.site, moved.meta.layer) == \
        (f"blocks.{layer + 3}.hook_mlp_out", None, "mlp", layer + 3)

    for name in ("cfg.json", "sae_weights.safetensors"):  # another SAE's file where this one was ingested from
        shutil.copy(folders[1] / name, folders[0] / name)
    with pytest.raises(SAEError, match=f"^{sid}: weights at .* changed since ingest .*re-ingest with --replace"):
        load_stored(sid, source, fmt, sha)
    assert load_stored(other[0], other[1], other[2], other[3]).meta.sha256 == other[3]  # the other one still loads

    shutil.rmtree(folders[0])
    with pytest.raises(SAEError, match=f"^{sid}: its weights at .* are missing.*atlas saes reroot"):
        load_stored(sid, source, fmt, sha)
