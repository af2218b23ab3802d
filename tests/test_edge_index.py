"""Edge indexes (atlas/store/edgeindex.py): lineage and cards read from them equal the SQL macros and the
Parquet reads on the planted family and on random atlases; index and table file live and die together."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atlas_cli import main
from atlas.methods import Threshold
from atlas.queries import lineage
from atlas.store import Atlas
from atlas.store.edges import EdgeIndexCache
from atlas.store.edgeindex import EdgeIndex, index_name

from .conftest import TINY, file_edges, kill_job_at

STATS = {"n_a": 8, "n_b": 8, "n_assigned": 8, "n_matched": 1, "matched_frac": 0.0, "tau": 0.7, "params_hash": "h"}


def _edges(lin):
    return sorted((e.sae_a, e.feature_a, e.sae_b, e.feature_b, e.kind, e.gap, e.rank, e.assigned, e.score)
                  for e in lin.edges)


def _parquet_only(atlas):
    """Today's table-file reads: a snapshot whose edge catalog ignores the edge indexes."""
    snap = atlas.read()
    snap.edges.indexes = None
    return snap


def _macro(con, sae, f, tau, mode, max_skip, method="decoder_cos"):
    return sorted(con.execute("SELECT sae_a, feature_a, sae_b, feature_b, kind, gap FROM lineage_edges(?, ?, tau_ := ?, "
                              "method_ := ?, max_skip_ := ?, edges_ := ?)", [sae, f, tau, method, max_skip, mode]).fetchall())


def test_every_matches_file_has_its_index_and_lookups_equal_the_rows(synth_atlas):
    with synth_atlas.read() as con:
        files = con.edges
        rows = con.execute("SELECT sae_a, sae_b, method, feature_a, feature_b, score, rank, assigned, "
                           "edge_kind(assigned, rank, rank_b) FROM matches").fetchall()
    assert {m for _, _, m in files.pairs} >= {"decoder_cos", "decoder_mse", "encoder_cos"}
    want: dict = {}
    for a, b, m, fa, fb, s, r, asg, kind in rows:
        want.setdefault((a, b, m), set()).add((fa, fb, s, r, asg, kind))
    for (a, b, m), expect in want.items():
        assert (synth_atlas.tables_dir / index_name(files.pairs[(a, b, m)][0])).exists()
        every = range(TINY.d_sae + 3)  # and features past the SAE's width: no rows
        fwd = {(e[1], e[3], e[5], e[6], e[7], e[8]) for e in file_edges(files, a, every, [b], True, m)}
        bwd = {(e[1], e[3], e[5], e[6], e[7], e[8]) for e in file_edges(files, b, every, [a], False, m)}
        assert fwd == bwd == expect, (a, b, m)
        one = file_edges(files, b, [7], [a], False, m)  # backward: exactly feature_b 7's rows
        assert sorted((e[1], e[3]) for e in one) == sorted((fa, fb) for fa, fb, *_ in expect if fb == 7)


@pytest.mark.parametrize("mode", ["default", "all"])
def test_lineage_from_the_index_equals_the_macro_and_the_parquet_reads_on_the_planted_family(synth_atlas, truth, mode):
    events = sorted({(t["sae_a"], t["feature_a"]) for t in truth if t["kind"] in ("split", "merge", "death")
                     and t["sae_a"] and t["sae_a"].endswith("s0-A")})[:10]
    with synth_atlas.read() as con, _parquet_only(synth_atlas) as plain:
        for sae, f in events:
            for tau, skip in ((0.7, 1), (0.6, 0)):
                got = lineage(con, sae, f, Threshold.of(tau=tau), max_skip=skip, edges=mode, include_sites=False)
                assert _edges(got) == _edges(lineage(plain, sae, f, Threshold.of(tau=tau), max_skip=skip, edges=mode,
                                                     include_sites=False))
                assert [e[:6] for e in _edges(got)] == _macro(con, sae, f, tau, mode, skip), (sae, f, tau)
            for direction in ("forward", "backward"):  # distance method, per-pair quantile bars
                kw = dict(direction=direction, edges=mode, include_sites=False)
                mse = Threshold.of("decoder_mse", quantile=0.4)
                assert _edges(lineage(con, sae, f, mse, **kw)) == _edges(lineage(plain, sae, f, mse, **kw))


def _random_atlas(path: Path, seed: int, layers: int, d: int, k: int) -> tuple[Atlas, list[str]]:
    """A stack of `layers` SAEs of `d` features, adjacent and distance-2 pairs of decoder_cos (scores on a
    0.05 grid, so some sit exactly at tau) and decoder_mse; ranks both ways as the matcher sets them,
    assignments a random one-to-one subset of the candidates."""
    rng = np.random.default_rng(seed)
    ids = [f"r{seed}-L{i}" for i in range(layers)]
    atlas = Atlas(path)
    with atlas.write() as w:
        w.insert_rows("saes", [{"sae_id": s, "model": "m", "hook": f"h{i}", "site": "resid", "layer": i, "d_in": 4,
                                "d_sae": d, "arch": "relu", "stack": "st", "source": "t", "format": "t",
                                "sha256": s} for i, s in enumerate(ids)])
        for i in range(layers):
            for j in (i + 1, i + 2):
                if j >= layers:
                    continue
                for method in ("decoder_cos", "decoder_mse"):
                    fa = np.repeat(np.arange(d), k)
                    fb = np.concatenate([rng.choice(d, k, replace=False) for _ in range(d)])
                    score = np.round(rng.uniform(0.3, 1.0, len(fa)) / 0.05) * 0.05
                    if method == "decoder_mse":
                        score = 1.3 - score
                    better = score if method == "decoder_cos" else -score
                    order = np.lexsort((-better, fa))
                    fa, fb, score, better = fa[order], fb[order], score[order], better[order]
                    rank = np.tile(np.arange(1, k + 1), d)
                    rank_b = np.empty(len(fa), np.int64)
                    for b in np.unique(fb):
                        at = np.nonzero(fb == b)[0]
                        rank_b[at[np.argsort(-better[at], kind="stable")]] = np.arange(1, len(at) + 1)
                    assigned = np.zeros(len(fa), bool)
                    used_a, used_b = set(), set()
                    for r in rng.permutation(len(fa)):
                        if fa[r] not in used_a and fb[r] not in used_b and rng.random() < 0.7:
                            assigned[r] = True
                            used_a.add(fa[r]), used_b.add(fb[r])
                    t = pa.table({"sae_a": [ids[i]] * len(fa), "feature_a": pa.array(fa, pa.int32()),
                                  "sae_b": [ids[j]] * len(fa), "feature_b": pa.array(fb, pa.int32()),
                                  "method": [method] * len(fa), "score": pa.array(score, pa.float32()),
                                  "rank": pa.array(rank, pa.int16()), "assigned": pa.array(assigned),
                                  "rank_b": pa.array(rank_b, pa.int16())})
                    w.replace_pair(ids[i], ids[j], method, t, dict(STATS, n_a=d, n_b=d), "r1")
    return atlas, ids


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31), layers=st.integers(2, 5), d=st.integers(3, 10), k=st.integers(1, 4))
def test_lineage_from_the_index_equals_the_macro_on_random_atlases(seed, layers, d, k):
    k = min(k, d)
    with tempfile.TemporaryDirectory() as tmp:
        atlas, ids = _random_atlas(Path(tmp) / "a.duckdb", seed, layers, d, k)
        rng = np.random.default_rng(seed + 1)
        with atlas.read() as con, _parquet_only(atlas) as plain:
            files = con.edges
            for _ in range(6):
                sae, f = ids[int(rng.integers(layers))], int(rng.integers(d))
                mode, skip = ["default", "all"][int(rng.integers(2))], int(rng.integers(0, 3))
                tau = [0.5, 0.7, 0.85][int(rng.integers(3))]
                got = lineage(con, sae, f, Threshold.of(tau=tau), max_skip=skip, edges=mode, include_sites=False)
                assert [e[:6] for e in _edges(got)] == _macro(con, sae, f, tau, mode, skip), (sae, f, tau, mode, skip)
                nodes = con.execute("SELECT sae_id, feature FROM lineage_nodes(?, ?, tau_ := ?, max_skip_ := ?, "
                                    "edges_ := ?)", [sae, f, tau, skip, mode]).fetchall()
                assert sorted((n.sae_id, n.feature) for n in got.nodes) == sorted(nodes)
                for direction in ("forward", "backward", "both"):
                    for method, kw in (("decoder_cos", dict(tau=tau)), ("decoder_mse", dict(quantile=0.5)),
                                       ("decoder_cos", dict(quantile=0.3))):
                        args = dict(direction=direction, max_skip=skip, edges=mode, include_sites=False)
                        bar = Threshold.of(method, **kw)
                        assert _edges(lineage(con, sae, f, bar, **args)) == \
                            _edges(lineage(plain, sae, f, bar, **args)), (direction, method, kw)
                for top in (1, k):  # the card's matches, both directions
                    out = sorted(files.outgoing(sae, f, top) + files.incoming(sae, f))
                    assert out == sorted(plain.edges.outgoing(sae, f, top) + plain.edges.incoming(sae, f))
                    want = con.execute(
                        "SELECT method, sae_b, feature_b, score, rank, assigned, 'out' FROM matches WHERE sae_a = ? "
                        "AND feature_a = ? AND rank <= ? UNION ALL SELECT method, sae_a, feature_a, score, rank, assigned, "
                        "'in' FROM matches WHERE sae_b = ? AND feature_b = ? AND (method = 'decoder_mse' OR score >= 0.5)",
                        [sae, f, top, sae, f]).fetchall()
                    assert out == sorted(want)


def test_per_pair_quantile_from_the_index_equals_duckdbs_quantile_cont(synth_atlas):
    with synth_atlas.read() as con:
        files = con.edges
        for (a, b, m), (rel, _) in list(files.pairs.items())[:6]:
            for q in (0.1, 0.5, 0.77):
                sql = con.execute("SELECT quantile_cont(score, ?) FROM matches WHERE sae_a = ? AND sae_b = ? AND "
                                  "method = ? AND assigned", [q, a, b, m]).fetchone()[0]
                assert files.index(a, b, m).quantile(q) == sql


def test_open_indexes_are_bounded_by_count_and_mapped_bytes(synth_atlas):
    with synth_atlas.read() as con:
        files = con.edges
    size = max(EdgeIndex(synth_atlas.tables_dir / index_name(f)).nbytes for f, _ in files.pairs.values())
    for cache in (EdgeIndexCache(synth_atlas.tables_dir, max_open=3),
                  EdgeIndexCache(synth_atlas.tables_dir, max_bytes=2 * size)):
        files.indexes = cache
        for a, b, m in files.pairs:
            assert files.index(a, b, m) is not None
            assert len(cache) <= 3 and cache._bytes <= max(cache.max_bytes, size)
        assert len(cache) <= 3


def test_without_index_files_lineage_reads_parquet_and_migrate_writes_them(synth_atlas, tmp_path):
    copy = synth_atlas.copy_to(tmp_path / "old.duckdb")
    for p in copy.tables_dir.rglob("*.idx"):
        p.unlink()
    sid = "synth-resid1-w256-s0-A"
    with synth_atlas.read() as con:
        want = _edges(lineage(con, sid, 3, edges="all", include_sites=False))
    with copy.read() as con:
        files = con.edges
        assert _edges(lineage(con, sid, 3, edges="all", include_sites=False)) == want
        assert all(files.index(*p) is None for p in files.pairs)
        n = len(files.pairs)
    r = CliRunner().invoke(main, ["--atlas", str(copy.path), "migrate"])
    assert r.exit_code == 0 and f"wrote {n} missing edge indexes" in r.output, r.output
    with copy.read() as con:
        files = con.edges
        assert all(files.index(*p) is not None for p in files.pairs)
        assert _edges(lineage(con, sid, 3, edges="all", include_sites=False)) == want


def _pair(n: int = 50, a: str = "A", b: str = "B") -> pa.Table:
    return pa.table({"sae_a": [a] * n, "feature_a": pa.array(np.arange(n), pa.int32()), "sae_b": [b] * n,
                     "feature_b": pa.array(np.arange(n)[::-1], pa.int32()), "method": ["decoder_cos"] * n,
                     "score": pa.array(np.full(n, 0.9), pa.float32()), "rank": pa.array(np.ones(n), pa.int16()),
                     "assigned": pa.array(np.ones(n, bool)), "rank_b": pa.array(np.ones(n), pa.int16())})


def _files(atlas: Atlas) -> set[str]:
    return {p.relative_to(atlas.tables_dir).as_posix() for p in atlas.tables_dir.rglob("*") if p.is_file()}


def test_collection_removes_a_dropped_table_file_with_its_index(tmp_path, monkeypatch):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(), STATS, "r1")
    first = _files(atlas)
    assert sum(f.endswith(".idx") for f in first) == 1
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(40), STATS, "r2")
    assert first < _files(atlas)  # kept for older readers, index included
    monkeypatch.setenv("ATLAS_GC_GRACE_S", "0")
    with atlas.write():
        pass
    left = _files(atlas)
    assert not first & left and sum(f.endswith(".idx") for f in left) == 1
    with atlas.read() as con:
        assert len(con.edges.lookup("A", "B", "decoder_cos", range(50), True)) == 40


def test_jobs_sweep_any_file_the_catalog_does_not_name(tmp_path):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(), STATS, "r1")
    named = _files(atlas)
    (atlas.tables_dir / "stray.csv").write_text("a\n1\n")
    (atlas.tables_dir / "matches" / "notes.txt").write_text("hello")
    with atlas.write():
        pass
    assert _files(atlas) == named


@pytest.mark.parametrize("at", [".idx", "a.duckdb"])
def test_a_killed_job_leaves_no_index_a_snapshot_names_without_its_table_file(tmp_path, at):
    """Killed while renaming the index into place, or while publishing: the published snapshot names each
    table file with its index, and the next job sweeps what the dead one left."""
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(), STATS, "r1")
    before = _files(atlas)
    kill_job_at(atlas, at)

    def named():
        with atlas.read() as con:
            rels = [r[0] for r in con.execute("SELECT file FROM parts").fetchall()]
        return rels

    for rel in named():
        assert (atlas.tables_dir / rel).exists() and (atlas.tables_dir / index_name(rel)).exists()
    assert _files(atlas) > before  # the dead job's files, named by nobody
    with atlas.write():
        pass
    assert _files(atlas) == before and len(named()) == 1


def _kinds_of(path: Path, features) -> list[str]:
    from atlas.store.edgeindex import KINDS

    return KINDS[EdgeIndex(path).forward(features).kind].tolist()


def test_an_index_is_read_by_its_own_kind_table(tmp_path, monkeypatch):
    """Kind codes are persisted: a file names its code table in its header (format 2), and one written when the
    kinds stood in another order, or a format-1 file without a table, reads the same kinds (never by position)."""
    import atlas.store.edgeindex as ei

    n, i = 50, np.arange(50)
    data = _pair(n).set_column(7, "assigned", pa.array(i % 4 == 0)) \
        .set_column(6, "rank", pa.array(np.where(i % 4 == 1, 1, 2), pa.int16())) \
        .set_column(8, "rank_b", pa.array(np.where(i % 4 == 2, 1, 3), pa.int16()))
    ei.write(tmp_path / "now.idx", data)
    want = _kinds_of(tmp_path / "now.idx", range(50))
    assert set(want) == {"carry", "split", "merge", "candidate"}
    # written by a code whose kinds stood in the reverse order (so its codes differ from ours)
    order = ei.KINDS.tolist()[::-1]
    with monkeypatch.context() as m:
        m.setattr(ei, "KINDS", np.array(order))
        m.setattr(ei, "CODE", {k: i for i, k in enumerate(order)})
        m.setattr(ei, "CANDIDATE", order.index("candidate"))
        ei.write(tmp_path / "other.idx", data)
    assert EdgeIndex(tmp_path / "other.idx").recode is not None
    assert _kinds_of(tmp_path / "other.idx", range(50)) == want
    # format 1: no table in the header, the codes of FORMAT_1_KINDS
    with monkeypatch.context() as m:
        m.setattr(ei, "KINDS", np.array(ei.FORMAT_1_KINDS))
        m.setattr(ei, "EDGE_KIND", tuple((k, c) for k, c in ei.EDGE_KIND if k in ei.FORMAT_1_KINDS))  # what it knew
        m.setattr(ei, "CODE", {k: i for i, k in enumerate(ei.FORMAT_1_KINDS)})
        m.setattr(ei, "CANDIDATE", ei.FORMAT_1_KINDS.index("candidate"))
        m.setattr(ei, "header_of", lambda rows, layout: {"format": 1, "rows": rows, "arrays": layout})
        ei.write(tmp_path / "v1.idx", data)
    assert _kinds_of(tmp_path / "v1.idx", range(50)) == want
    # a kind this code does not know: refused by name, not misread
    with monkeypatch.context() as m:
        m.setattr(ei, "header_of", lambda rows, layout: {"format": 2, "rows": rows, "arrays": layout,
                                                         "kinds": ["carry", "split", "merge", "loop", "candidate"]})
        ei.write(tmp_path / "new.idx", data)
    with pytest.raises(ValueError, match="edge kind 'loop'"):
        EdgeIndex(tmp_path / "new.idx")
