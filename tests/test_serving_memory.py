"""Serving memory does not grow with the atlas: lineage and cards read table files by point lookups, and a
whole-table export streams with about one batch in memory (docs/design.md, Serving memory)."""

from __future__ import annotations

import gc
import io
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from atlas_api import export
from atlas_api.app import create_app
from atlas.methods import Threshold
from atlas.queries import lineage
from atlas.store import Atlas

from .conftest import TINY, build_atlas

STATS = {"n_a": 256, "n_b": 256, "n_assigned": 256, "n_matched": 1, "matched_frac": 0.0, "tau": 0.7, "params_hash": "h"}


def _matches(a: str, b: str, k: int, seed: int) -> pa.Table:
    """k candidates per feature of a 256-wide pair, random targets and scores (this measures storage and
    serving, not matching)."""
    rng = np.random.default_rng(seed)
    n = TINY.d_sae
    fa = np.repeat(np.arange(n), k)
    return pa.table({"sae_a": [a] * len(fa), "feature_a": pa.array(fa, pa.int32()), "sae_b": [b] * len(fa),
                     "feature_b": pa.array(rng.integers(0, n, len(fa)), pa.int32()),
                     "method": ["decoder_cos"] * len(fa), "score": pa.array(rng.random(len(fa)), pa.float32()),
                     "rank": pa.array(np.tile(np.arange(1, k + 1), n), pa.int16()),
                     "assigned": pa.array(np.tile(np.arange(k) == 0, n)),
                     "rank_b": pa.array(rng.integers(1, k + 1, len(fa)), pa.int16())})


@pytest.fixture(scope="module")
def stack(family, tmp_path_factory) -> list:
    """The base stack's SAE folders (layers 0..3 of seed 0, dataset A)."""
    return [f for f in family[1] if f.parent.name == "A-s0"][:TINY.n_layers]


def _atlas(path, folders, k: int) -> Atlas:
    atlas = build_atlas(path, folders, match=False)
    with atlas.read() as con:
        ids = [r[0] for r in con.execute("SELECT sae_id FROM saes ORDER BY layer").fetchall()]
    with atlas.write() as w:
        for i, (a, b) in enumerate(zip(ids, ids[1:])):
            w.replace_pair(a, b, "decoder_cos", _matches(a, b, k, i), STATS, "r1")
    return atlas


def _held_after_requests(atlas: Atlas) -> tuple[int, set, int, int]:
    """(Python bytes still held after 200 lineage + card requests, the snapshot's cache keys, open edge indexes and
    Parquet footers, Arrow bytes still allocated) of a server over `atlas`."""
    with TestClient(create_app(atlas.path)) as c:
        snap = c.app.dependencies["atlas"].dependency().snapshot()
        ids = list(snap.saes)
        c.get(f"/api/saes/{ids[0]}/features/0")  # first use builds the per-snapshot caches
        gc.collect()
        arrow0 = pa.total_allocated_bytes()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        rng = np.random.default_rng(0)
        for i in range(100):
            sae, f = ids[i % len(ids)], int(rng.integers(0, TINY.d_sae))
            assert c.get(f"/api/saes/{sae}/features/{f}").status_code == 200
            lin = lineage(snap, sae, f, Threshold.of(tau=0.9), include_sites=False)
            assert lin.nodes
        gc.collect()
        held = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
        files = snap.edges
        return held, set(snap._cache), (len(files.indexes), len(files.reader._meta)), pa.total_allocated_bytes() - arrow0


def test_server_memory_after_the_same_requests_does_not_grow_with_match_rows(stack, tmp_path):
    small = _atlas(tmp_path / "n" / "atlas.duckdb", stack, k=4)
    big = _atlas(tmp_path / "4n" / "atlas.duckdb", stack, k=16)  # 4x the match rows
    with big.read() as con, small.read() as con_small:
        rows = con.execute("SELECT count(*) FROM matches").fetchall()[0][0]
        assert rows == 4 * con_small.execute("SELECT count(*) FROM matches").fetchall()[0][0]
        whole = con.cursor().sql("SELECT * FROM matches").to_arrow_table().nbytes  # what an in-memory index held
    held_n, keys_n, open_n, arrow_n = _held_after_requests(small)
    held_4n, keys_4n, open_4n, arrow_4n = _held_after_requests(big)
    assert keys_n == keys_4n and open_n == open_4n == (TINY.n_layers - 1, 0)  # one open index per pair, no footers
    assert max(arrow_n, arrow_4n) <= 0  # no Arrow buffers outlive a request
    # what stays behind (interned strings, DuckDB's Python objects) does not scale with the rows
    assert held_4n < max(2 * held_n, 256 * 1024) and held_4n < whole, (held_n, held_4n, whole)


def test_export_streams_a_table_file_table_batch_by_batch_and_equals_the_view(synth_atlas, monkeypatch):
    monkeypatch.setattr(export, "BATCH_ROWS", 1000)  # the table is many batches long
    with TestClient(create_app(synth_atlas.path)) as c:
        r = c.get("/api/export/matches.parquet")
        assert r.status_code == 200 and "matches.parquet" in r.headers["content-disposition"]
        got = pq.read_table(io.BytesIO(r.content))
        with synth_atlas.read() as con:
            want = con.cursor().sql("SELECT * FROM matches").to_arrow_table()
        assert got.schema.equals(want.schema) and got.num_rows == want.num_rows > 10 * 1000
        keys = ["sae_a", "sae_b", "method", "feature_a", "rank"]
        assert got.sort_by([(k, "ascending") for k in keys]).equals(want.sort_by([(k, "ascending") for k in keys]))
        assert pq.ParquetFile(io.BytesIO(r.content)).metadata.num_row_groups > 10  # written batch by batch
        r = c.get("/api/export/features.parquet")  # a DuckDB table, through a cursor's record batches
        with synth_atlas.read() as con:
            want = con.cursor().sql("SELECT * FROM features").to_arrow_table()
        assert pq.read_table(io.BytesIO(r.content)).equals(want)


def test_export_memory_is_one_batch_whatever_the_table_size():
    """The bytes held while streaming (Arrow buffers and undrained output) stay under a bound set by the batch,
    the same at 4x the rows, and far below the table."""
    rows = 20_000
    schema = pa.schema([("feature", pa.int32()), ("score", pa.float32()), ("label", pa.string())])

    def batches(n):
        for i in range(n):
            rng = np.random.default_rng(i)
            yield pa.record_batch([pa.array(np.arange(rows, dtype=np.int32) + i * rows),
                                   pa.array(rng.random(rows, dtype=np.float32)),
                                   pa.array([f"label {j}" for j in range(rows)])], schema=schema)

    def peak(n):
        base = pa.total_allocated_bytes()
        top, out = 0, io.BytesIO()
        for chunk in export.parquet_stream(schema, batches(n)):
            out.write(chunk)
            top = max(top, pa.total_allocated_bytes() - base + len(chunk))
        out.seek(0)
        assert pq.read_table(out).num_rows == rows * n
        return top

    one_batch = next(batches(1)).nbytes
    small, big = peak(8), peak(32)
    assert big < 1.25 * small + one_batch and big < 8 * one_batch < 32 * one_batch, (small, big, one_batch)
