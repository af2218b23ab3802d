"""Ingest into the atlas: idempotence, refusals, one transaction per job, crash safety, read-while-write."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from atlas.sae import SAEError
from atlas.store import SCHEMA_VERSION, Atlas, AtlasBusy, Snapshot
from atlas_ingest.jobs.ingest import ingest
from atlas_ingest.sources import read_sae


def _ingest(atlas, folders, overrides=None, **kw):
    return ingest(atlas, [lambda f=f: read_sae(f, **(overrides or {})) for f in folders], **kw)


def _digest(atlas: Atlas, skip: tuple[str, ...] = ()) -> str:
    """Content of every table but `skip` (not the file bytes, which DuckDB may lay out differently)."""
    with atlas.read() as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()
                  if r[0] not in skip]
        h = hashlib.sha256()
        for t in tables:
            h.update(repr(con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()).encode())
    return h.hexdigest()


def _runs(atlas: Atlas) -> list[tuple]:
    with atlas.read() as con:
        return con.execute("SELECT run_id, kind, status FROM runs ORDER BY started_at").fetchall()


def test_ingest_then_sql_and_reingest_is_a_noop(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    first = _ingest(atlas, family[1][:4])
    assert len(first.added) == 4 and first.features == 4 * 256
    con = duckdb.connect(str(atlas.path), read_only=True)
    rows = con.execute("SELECT sae_id, layer, d_sae, arch, seed, dataset FROM saes ORDER BY layer").fetchall()
    assert rows == [(f"synth-resid{i}-w256-s0-A", i, 256, "jumprelu", 0, "A") for i in range(4)]
    assert con.execute("SELECT count(*), count(threshold) FROM features").fetchone() == (1024, 1024)
    assert con.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    with atlas.read() as con:  # features rows are the weights' own numbers
        norms = con.execute("SELECT dec_norm FROM features WHERE sae_id = 'synth-resid2-w256-s0-A' ORDER BY feature").fetchall()
    w = load_file(str(family[1][2] / "sae_weights.safetensors"))
    np.testing.assert_allclose([n for n, in norms], np.linalg.norm(w["W_dec"], axis=1), rtol=1e-6)
    before, runs = _digest(atlas, skip=("runs",)), _runs(atlas)
    indexes = sorted(atlas.index_dir.iterdir())
    again = _ingest(atlas, family[1][:4])
    assert again.unchanged == first.added and not again.added and again.features == 0
    assert _digest(atlas, skip=("runs",)) == before  # nothing but a run record is written
    assert _runs(atlas)[:-1] == runs and [r[1:] for r in _runs(atlas)] == [("ingest", "ok")] * 2
    assert sorted(atlas.index_dir.iterdir()) == indexes
    assert sorted(p.name for p in atlas.index_dir.glob("*.faiss")) == sorted(
        f"{sid}-{sha[:12]}.faiss" for sid, sha in duckdb.connect(str(atlas.path), read_only=True).execute(
            "SELECT sae_id, sha256 FROM saes").fetchall())


def test_other_weights_under_same_id_need_replace(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    _ingest(atlas, family[1][:1])
    before = _digest(atlas)
    other = family[1][1]  # layer 1's weights, stored under layer 0's id
    with pytest.raises(SAEError, match="already in the atlas with other weights.*--replace"):
        _ingest(atlas, [other], overrides={"sae_id": "synth-resid0-w256-s0-A", "layer": 0})
    assert _digest(atlas) == before
    out = ingest(atlas, [lambda: read_sae(other, sae_id="synth-resid0-w256-s0-A", layer=0)], replace=True)
    assert out.replaced == ["synth-resid0-w256-s0-A"]
    assert len(list(atlas.index_dir.glob("*.faiss"))) == 2  # the old index goes at the next job
    _ingest(atlas, family[1][2:3])
    assert len(list(atlas.index_dir.glob("*.faiss"))) == 2


def test_a_failing_job_stores_nothing(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    _ingest(atlas, family[1][:1])
    before = _digest(atlas)
    bad = tmp_path / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    save_file({"W_enc": rng.standard_normal((128, 256), dtype=np.float32),
               "W_dec": rng.standard_normal((256, 128), dtype=np.float32),
               "b_enc": np.zeros(256, np.float32), "b_dec": np.zeros(128, np.float32),
               "threshold": np.ones(256, np.float32)}, str(bad / "sae_weights.safetensors"))
    (bad / "cfg.json").write_text('{"d_in": 128, "d_sae": 256, "architecture": "jumprelu", "metadata": '
                                  '{"model_name": "synth", "hook_name": "blocks.9.hook_resid_post", '
                                  '"seed": 0, "dataset_path": "A"}}')
    with pytest.raises(SAEError, match=r"bad: .*128 differs from synth-resid0-w256-s0-A"):
        _ingest(atlas, [family[1][1], bad])  # the first, good SAE must not land either
    assert _digest(atlas) == before
    assert not list(atlas.dir.glob("working-*"))


def test_second_writer_is_refused_while_one_writes(tmp_path):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write():
        with pytest.raises(AtlasBusy, match="another job is writing"):
            with atlas.write():
                pass


def test_reader_keeps_its_snapshot_while_a_job_publishes(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    _ingest(atlas, family[1][:1])
    reader = atlas.read()
    _ingest(atlas, family[1][1:3])  # a job runs and publishes while the reader is open
    assert reader.execute("SELECT count(*) FROM saes").fetchone()[0] == 1
    reader.close()
    with atlas.read() as fresh:
        assert fresh.execute("SELECT count(*) FROM saes").fetchone()[0] == 3



def test_a_snapshot_says_when_a_job_has_published_another(tmp_path, family):
    """The one "is this still the file I opened" the server and its SQL workers ask (store.Snapshot)."""
    atlas = Atlas(tmp_path / "a.duckdb")
    _ingest(atlas, family[1][:1])
    snap = Snapshot(atlas.path, check=True)
    assert snap.is_current()
    _ingest(atlas, family[1][1:2])
    assert not snap.is_current() and snap.con.execute("SELECT count(*) FROM saes").fetchone()[0] == 1
    atlas.path.rename(tmp_path / "moved.duckdb")
    with pytest.raises(OSError):
        snap.is_current()
    snap.close()



def test_an_atomic_write_that_fails_leaves_no_file(tmp_path):
    """parts.write_atomic, under every table file and edge index: a failed write leaves neither file nor temporary."""
    from atlas.store.parts import write_atomic

    def half(tmp):
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "t.parquet", half)
    assert list(tmp_path.iterdir()) == []
    assert write_atomic(tmp_path / "t.parquet", lambda tmp: tmp.write_bytes(b"whole")) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


KILL_INGEST = """
import os, signal, sys
from atlas.store import Atlas
from atlas_ingest.jobs.ingest import ingest
from atlas_ingest.sources import read_sae
folders = sys.argv[2:]
def source(i, f):
    def read():
        if i == 2:  # two SAEs are already written to the working copy: die here
            os.kill(os.getpid(), signal.SIGKILL)
        return read_sae(f)
    return read
ingest(Atlas(sys.argv[1]), [source(i, f) for i, f in enumerate(folders)])
"""


def test_killed_ingest_leaves_the_atlas_as_it_was(tmp_path, family):
    atlas = Atlas(tmp_path / "a.duckdb")
    _ingest(atlas, family[1][:1])
    before = _digest(atlas)
    indexes = sorted(atlas.index_dir.iterdir())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_INGEST), str(atlas.path),
                           *map(str, family[1][1:5])], capture_output=True)
    assert proc.returncode == -9
    assert _digest(atlas) == before
    # The killed job's index files carry names no snapshot uses; the next job sweeps them and its lock is free.
    out = _ingest(atlas, family[1][1:2])
    assert out.added == ["synth-resid1-w256-s0-A"]
    assert len(sorted(atlas.index_dir.glob("*.faiss"))) == 2
    assert not list(atlas.dir.glob("working-*")) and indexes
