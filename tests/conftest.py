"""Shared builders: a tiny planted-truth family, ingested and matched, in a temporary atlas."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from atlas.match.pair import MatchParams
from atlas.store import Atlas
from atlas.synth import GROUND_TRUTH, SynthConfig, generate

# d_in = 512 keeps random cosines between unrelated features (about ±0.05, max about 0.25) well
# below the assignment floor, as at real widths (2304), while staying tiny for speed.
TINY = SynthConfig(d_in=512, d_sae=256, n_layers=4, n_seeds=3, second_dataset=True, seed=7)


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("family")
    return out, generate(TINY, out)


@pytest.fixture(scope="session")
def truth(family) -> list[dict]:
    return pq.read_table(family[0] / GROUND_TRUTH).to_pylist()


def build_atlas(path: Path, folders: list[Path], match: bool = True) -> Atlas:
    from ingest.jobs.ingest import ingest
    from ingest.jobs.match import run_match, select_pairs
    from ingest.sources import read_sae

    atlas = Atlas(path)
    ingest(atlas, [lambda f=f: read_sae(f) for f in folders])
    if match:
        with atlas.read() as con:
            layer_pairs = select_pairs(con, "distance", distance=2)
            sibling_pairs = select_pairs(con, "siblings")
        run_match(atlas, layer_pairs, ["decoder_cos", "decoder_mse"], MatchParams())
        run_match(atlas, sibling_pairs, ["decoder_cos", "encoder_cos"], MatchParams())
    return atlas


@pytest.fixture(scope="session")
def synth_atlas(family, tmp_path_factory) -> Atlas:
    return build_atlas(tmp_path_factory.mktemp("atlas") / "atlas.duckdb", family[1])


def planted_flow(truth: list[dict], stack_ids: list[str], d_sae: int) -> list[tuple[int, int | None, int | None]]:
    """(layer, births, deaths) of the base stack from ground truth, as `birth_death` counts them at tau 0.8:
    a carried feature (cosine ~0.99) and one child of a split (~0.89) continue; a death and both parents of
    a merge (~0.71) end; the unassigned split child and the merged feature are born."""
    out = []
    for layer, sae in enumerate(stack_ids):
        going = {t["feature_a"] for t in truth if t["sae_a"] == sae and t["kind"] in ("carry", "split")}
        coming = {t["feature_a"] for t in truth if layer and t["sae_a"] == stack_ids[layer - 1]
                  and t["kind"] in ("carry", "split")}
        out.append((layer, None if layer == 0 else d_sae - len(coming),
                    None if layer == len(stack_ids) - 1 else d_sae - len(going)))
    return out
