"""Table files (docs/storage.md): matches, correlations and compositions live as one Parquet file per pair
that the catalog names; publishing copies only the small DuckDB file; a plain read-only DuckDB connection
sees the same tables from anywhere; dropped files outlive readers by the grace period; a killed job or a
killed migration leaves the published atlas as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from atlas_cli import main
from atlas.store import SCHEMA_VERSION, Atlas
from atlas.store.parts import ROW_GROUP, PartReader

from .conftest import build_atlas, kill_job_at

SAE0, SAE1, SAE2 = (f"synth-resid{i}-w256-s0-A" for i in range(3))


def _pair(seed: int, n_a: int = 300, k: int = 4, method: str = "decoder_cos", a: str = "A", b: str = "B") -> pa.Table:
    rng = np.random.default_rng(seed)
    fa = np.repeat(np.arange(n_a), k)
    return pa.table({"sae_a": [a] * len(fa), "feature_a": pa.array(fa, pa.int32()), "sae_b": [b] * len(fa),
                     "feature_b": pa.array(rng.integers(0, n_a, len(fa)), pa.int32()), "method": [method] * len(fa),
                     "score": pa.array(rng.random(len(fa)), pa.float32()),
                     "rank": pa.array(np.tile(np.arange(1, k + 1), n_a), pa.int16()),
                     "assigned": pa.array(np.tile(np.arange(k) == 0, n_a)),
                     "rank_b": pa.array(rng.integers(1, k + 1, len(fa)), pa.int16())})


STATS = {"n_a": 300, "n_b": 300, "n_assigned": 300, "n_matched": 1, "matched_frac": 0.0, "tau": 0.7, "params_hash": "h"}


@pytest.fixture(scope="module")
def matched(family, tmp_path_factory) -> Atlas:
    return build_atlas(tmp_path_factory.mktemp("tf") / "atlas.duckdb", family[1][:3], match=True)


def test_big_tables_are_files_the_catalog_names_sorted_for_point_lookups(matched):
    with duckdb.connect(str(matched.path), read_only=True) as con:  # a plain connection: what `duckdb -readonly` sees
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables "
                                 "WHERE table_schema = 'main'").fetchall())
        assert kinds["matches"] == kinds["correlations"] == "VIEW" and kinds["saes"] == "BASE TABLE"
        parts = con.execute("SELECT sae_a, sae_b, method, file, reverse_file, n_rows FROM parts "
                            "WHERE table_name = 'matches'").fetchall()
        stored = con.execute("SELECT sae_a, sae_b, method, count(*) FROM matches GROUP BY ALL").fetchall()
    assert sorted((a, b, m, n) for a, b, m, _, _, n in parts) == sorted(stored)  # one file per pair-method, all rows
    for a, b, method, file, reverse, n in parts:
        t = pq.read_table(matched.tables_dir / file)
        assert t.num_rows == n and set(t["sae_a"].to_pylist()) == {a} and set(t["method"].to_pylist()) == {method}
        fa = t["feature_a"].to_numpy()
        assert (np.diff(fa) >= 0).all()  # a feature's rows are contiguous
        assert pq.read_metadata(matched.tables_dir / file).row_group(0).num_rows <= ROW_GROUP
        if method == "decoder_mse":
            assert reverse is None
        else:  # the reverse file: exactly the rows >= 0.5, by feature_b
            r = pq.read_table(matched.tables_dir / reverse)
            assert (np.diff(r["feature_b"].to_numpy()) >= 0).all()
            assert r.num_rows == int((t["score"].to_numpy() >= 0.5).sum())


def test_point_lookups_read_the_rows_of_exactly_the_wanted_features(matched):
    with matched.read() as con:
        file = con.execute("SELECT file FROM parts WHERE table_name = 'matches' AND method = 'decoder_cos' "
                           "LIMIT 1").fetchone()[0]
    whole = pq.read_table(matched.tables_dir / file)
    reader = PartReader(matched.tables_dir, max_open=2)
    for wanted in ([0], [5, 77, 255], [300_000], []):
        got = reader.rows(file, "feature_a", wanted)
        expect = whole.filter(pa.compute.is_in(whole["feature_a"], pa.array(wanted, pa.int32())))
        assert got.sort_by([("feature_a", "ascending"), ("rank", "ascending")]).equals(
            expect.sort_by([("feature_a", "ascending"), ("rank", "ascending")]))


def test_a_plain_duckdb_connection_from_another_folder_sees_matches(matched, tmp_path):
    code = ("import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
            "print(con.execute('SELECT count(*) FROM matches').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(matched.path)], cwd=tmp_path, capture_output=True, text=True)
    with matched.read() as con:
        assert out.stdout.strip() == str(con.execute("SELECT count(*) FROM matches").fetchone()[0]) != "0", out.stderr


def test_the_duckdb_command_line_reads_the_atlas_as_the_readme_says(matched, tmp_path):
    """`duckdb -readonly atlas.duckdb` from another folder: the views, the macros, the catalog."""
    cli = shutil.which("duckdb", path=os.path.dirname(sys.executable)) or shutil.which("duckdb")
    assert cli, "the duckdb command line (pip install duckdb-cli, a test extra) is missing"
    sql = ("SELECT count(*) FROM matches; SELECT count(*) FROM lineage_edges('synth-resid0-w256-s0-A', 3); "
           "SELECT count(*) FROM matches WHERE sae_a = 'synth-resid1-w256-s0-A' AND method = 'decoder_cos';")
    out = subprocess.run([cli, "-readonly", str(matched.path), "-csv", "-noheader", "-c", sql], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    with matched.read() as con:
        expect = [con.execute("SELECT count(*) FROM matches").fetchone()[0],
                  con.execute("SELECT count(*) FROM lineage_edges('synth-resid0-w256-s0-A', 3)").fetchone()[0],
                  con.execute("SELECT count(*) FROM matches WHERE sae_a = 'synth-resid1-w256-s0-A' "
                              "AND method = 'decoder_cos'").fetchone()[0]]
    assert [int(x) for x in out.stdout.split()] == expect and all(expect)


def test_the_locked_down_reader_reads_the_table_files_and_nothing_else(matched, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with matched.read() as con:
        assert con.execute("SELECT count(*) FROM matches").fetchone()[0] > 0
        for sql in (f"SELECT * FROM read_csv('{secret}')",
                    f"SELECT * FROM read_csv('{matched.tables_dir}/../../{secret.parent.name}/secret.csv')"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql).fetchall()


def test_a_moved_atlas_says_what_to_type_and_reads_after_atlas_migrate(matched, tmp_path):
    moved = tmp_path / "elsewhere.duckdb"
    moved.write_bytes(matched.path.read_bytes())  # moved by hand: the DuckDB file and its folder
    (tmp_path / "elsewhere.files").mkdir()
    for sub in ("tables", "indexes"):
        (matched.dir / sub).rename(tmp_path / "elsewhere.files" / sub)
    try:
        r = CliRunner().invoke(main, ["--atlas", str(moved), "info", SAE0])
        assert r.exit_code == 2 and "atlas migrate" in r.output and r.output.count("\n") == 1, r.output
        r = CliRunner().invoke(main, ["--atlas", str(moved), "migrate"])
        assert r.exit_code == 0, r.output
        with Atlas(moved).read() as con:
            assert con.execute("SELECT count(*) FROM matches").fetchone()[0] > 0
    finally:  # put the shared fixture's files back
        for sub in ("tables", "indexes"):
            (tmp_path / "elsewhere.files" / sub).rename(matched.dir / sub)


def test_publish_copies_the_catalog_not_the_table_files(tmp_path):
    sizes = {}
    for n_a in (300, 30_000):  # 100x the match rows
        atlas = Atlas(tmp_path / f"a{n_a}.duckdb")
        with atlas.write() as w:
            for i in range(4):
                w.replace_pair(f"A{i}", f"B{i}", "decoder_cos", _pair(i, n_a=n_a, a=f"A{i}", b=f"B{i}"), STATS, "r1")
        files = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in atlas.tables_dir.rglob("*.parquet")}
        with atlas.write() as w:
            w.replace_pair("C", "D", "decoder_cos", _pair(9, n_a=n_a, a="C", b="D"), STATS, "r2")
        # earlier files are untouched by the next job's publish (same inode, same mtime)
        assert all((p.stat().st_ino, p.stat().st_mtime_ns) == v for p, v in files.items())
        sizes[n_a] = (atlas.path.stat().st_size, sum(p.stat().st_size for p in atlas.tables_dir.rglob("*.parquet")))
    assert sizes[30_000][1] > 50 * sizes[300][1]  # the table files grew with the rows ...
    assert sizes[30_000][0] <= sizes[300][0] + 256 * 1024  # ... the DuckDB file a publish copies did not


def test_dropped_files_stay_for_old_readers_until_the_grace_period_ends(tmp_path, monkeypatch):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(1), STATS, "r1")
    old_reader = atlas.read()
    first = set(atlas.tables_dir.rglob("*.parquet"))
    with atlas.write() as w:  # replaces the pair: its old files leave the catalog
        w.replace_pair("A", "B", "decoder_cos", _pair(2), STATS, "r2")
    with atlas.write():  # a later job inside the grace period keeps them
        pass
    assert first <= set(atlas.tables_dir.rglob("*.parquet"))
    assert old_reader.execute("SELECT DISTINCT run_id FROM matches").fetchall() == [("r1",)]  # its snapshot reads on
    old_reader.close()
    monkeypatch.setenv("ATLAS_GC_GRACE_S", "0")
    with atlas.write():
        pass
    assert not first & set(atlas.tables_dir.rglob("*.parquet"))
    with atlas.read() as con:
        assert con.execute("SELECT DISTINCT run_id FROM matches").fetchall() == [("r2",)]
        assert con.execute("SELECT count(*) FROM dropped_parts").fetchone()[0] == 0


def test_a_failed_job_leaves_no_table_file_behind(tmp_path):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(1), STATS, "r1")
    before = set(atlas.tables_dir.rglob("*.parquet"))
    with pytest.raises(RuntimeError), atlas.write() as w:
        w.replace_pair("A", "C", "decoder_cos", _pair(2, b="C"), STATS, "r2")
        raise RuntimeError("disk full")
    assert set(atlas.tables_dir.rglob("*.parquet")) == before


def test_deleting_an_sae_drops_its_files_from_the_catalog(tmp_path):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(1), STATS, "r1")
        w.replace_pair("B", "C", "decoder_cos", _pair(2, a="B", b="C"), STATS, "r1")
        with pytest.raises(ValueError, match="sae_a"):  # rows of another pair than the one named
            w.replace_pair("C", "D", "decoder_cos", _pair(3), STATS, "r1")
        w.delete_sae("A")
    with atlas.read() as con:
        assert con.execute("SELECT sae_a, sae_b FROM parts").fetchall() == [("B", "C")]
        assert con.execute("SELECT count(*) FROM matches WHERE sae_a = 'A' OR sae_b = 'A'").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM dropped_parts").fetchone()[0] == 2  # A->B's file and reverse file


KILL_MIGRATE = """
import os, signal, sys
import atlas.store.parts as parts
from atlas_cli import main
real, calls = parts.write_part, [0]
def dying(*a, **k):
    calls[0] += 1
    if calls[0] == 2:  # one pair's file is written: die mid-migration
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
parts.write_part = dying
main(["--atlas", sys.argv[1], "migrate"])
"""


def test_migrate_moves_a_version_4_atlas_out_and_a_killed_migration_changes_nothing(matched, tmp_path):
    """A version-4 atlas (big tables inside the DuckDB file), built from a current one's rows."""
    old = tmp_path / "v4.duckdb"
    matched.copy_to(old)
    with duckdb.connect(str(old)) as con:
        for table in ("matches", "correlations", "compositions"):
            con.execute(f"CREATE TABLE {table}_rows AS SELECT * FROM {table}")
            con.execute(f"DROP VIEW {table}")
            con.execute(f"ALTER TABLE {table}_rows RENAME TO {table}")
        con.execute("DROP TABLE parts; DROP TABLE dropped_parts; DROP SCHEMA empty CASCADE")
        con.execute("UPDATE schema_version SET version = 4")
        con.execute("CHECKPOINT")
    for p in Atlas(old).tables_dir.rglob("*.parquet"):
        p.unlink()
    q = "SELECT * EXCLUDE (run_id) FROM matches ORDER BY ALL"
    with duckdb.connect(str(old), read_only=True) as con:
        rows = con.execute(q).fetchall()
    assert rows
    data = old.read_bytes()

    r = CliRunner().invoke(main, ["--atlas", str(old), "info", SAE0])
    assert r.exit_code == 2 and "atlas migrate" in r.output, r.output  # readers say what to type

    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_MIGRATE), str(old)], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert old.read_bytes() == data  # the published atlas is as it was

    r = CliRunner().invoke(main, ["--atlas", str(old), "migrate"])
    assert r.exit_code == 0 and f"to {SCHEMA_VERSION}" in r.output, r.output
    with Atlas(old).read() as con, matched.read() as ref:
        assert con.execute(q).fetchall() == rows
        for t in ("correlations", "compositions", "pair_stats", "saes", "features"):
            assert con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() == \
                ref.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall(), t
    # the killed attempt's file was swept; the catalog names every file there is
    with Atlas(old).read() as con:
        named = {f for pair in con.execute("SELECT file, reverse_file FROM parts").fetchall() for f in pair if f}
    assert {p.relative_to(Atlas(old).tables_dir).as_posix() for p in Atlas(old).tables_dir.rglob("*.parquet")} == named
    assert old.stat().st_size < len(data)  # the DuckDB file shrank to the catalog
    r = CliRunner().invoke(main, ["--atlas", str(old), "migrate"])
    assert r.exit_code == 0 and "already at schema version" in r.output


def test_a_job_killed_while_publishing_leaves_the_atlas_and_its_files_as_they_were(tmp_path):
    atlas = Atlas(tmp_path / "a.duckdb")
    with atlas.write() as w:
        w.replace_pair("A", "B", "decoder_cos", _pair(1), STATS, "r1")
    q = "SELECT * FROM matches ORDER BY ALL"
    with atlas.read() as con:
        before = con.execute(q).fetchall()
    files = set(atlas.tables_dir.rglob("*.parquet"))
    kill_job_at(atlas, atlas.path.name)
    with atlas.read() as con:
        assert con.execute(q).fetchall() == before
        assert con.execute("SELECT count(*) FROM parts").fetchone()[0] == 1
    assert set(atlas.tables_dir.rglob("*.parquet")) > files  # the dead job's new file is there, named by nobody
    with atlas.write():  # the next job sweeps it and publishes the same atlas
        pass
    assert set(atlas.tables_dir.rglob("*.parquet")) == files
    assert not list(tmp_path.glob("*.publishing")) and not list(atlas.dir.glob("working-*"))
    with atlas.read() as con:
        assert con.execute(q).fetchall() == before


def test_matches_by_b_and_matches_above_hold_what_a_filter_of_matches_gives(matched, tmp_path):
    """matches_by_b is the reverse files: every row of a similarity method at or above its index floor, sorted by
    feature_b; matches_above(method, s) equals `matches WHERE method AND score >= s` above the floor (read from
    the reverse files), below it (the pair files), and for a pair whose reverse file the catalog lacks."""
    from atlas.methods import METHODS

    floor = METHODS["decoder_cos"].index_floor
    cols = "sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned, rank_b"

    def rows(con, sql, *params):
        return sorted(con.execute(f"SELECT {cols} FROM {sql}", list(params)).fetchall())

    with matched.read() as con:
        assert rows(con, "matches_by_b") == rows(con, "matches WHERE method = 'decoder_cos' AND score >= ?", floor) != []
        assert con.execute("SELECT count(*) FROM matches WHERE method = 'decoder_mse'").fetchone()[0]  # no floor: none
        for s in (floor, 0.7, 0.2):
            assert rows(con, "matches_above('decoder_cos', ?)", s) == rows(
                con, "matches WHERE method = 'decoder_cos' AND score >= ?", s) != []
        first = con.execute(f"SELECT {cols} FROM matches_by_b WHERE sae_a = ? AND sae_b = ? AND method = "
                            "'decoder_cos'", [SAE0, SAE1]).fetchall()
    assert [r[3] for r in first] == sorted(r[3] for r in first)  # by feature_b
    copy = matched.copy_to(tmp_path / "no-reverse.duckdb")
    with duckdb.connect(str(copy.path)) as con:  # as if one pair had been written without its reverse file
        con.execute("UPDATE parts SET reverse_file = NULL WHERE sae_a = ? AND sae_b = ? AND method = 'decoder_cos'",
                    [SAE0, SAE1])
    with copy.write():  # the views follow the catalog
        pass
    with copy.read() as con:
        assert rows(con, "matches_by_b") == rows(con, "matches WHERE method = 'decoder_cos' AND score >= ?", floor)
        assert rows(con, "matches_above('decoder_cos', 0.7)") == rows(
            con, "matches WHERE method = 'decoder_cos' AND score >= 0.7")
        assert rows(con, "matches_above('decoder_cos', 0.7) WHERE sae_a = ? AND sae_b = ?", SAE0, SAE1) != []


def test_lineage_edges_reads_the_reverse_files_not_every_candidate(matched):
    """At a bar at or above the index floor the macro reads the stack's reverse files (rows >= the floor), not the
    pair files of every candidate as the macro before it did (bench/scale.py keeps that one): the same edges from
    well under half the bytes; below the floor it reads the pair files and still agrees."""
    import json

    from bench.scale import LINEAGE_EDGES_BEFORE

    def run(con, macro, tau):
        sql = f"SELECT * FROM {macro}(?, 3, tau_ := ?)"
        plan = json.loads(con.execute(f"EXPLAIN (ANALYZE, FORMAT json) {sql}", [SAE0, tau]).fetchall()[0][1])
        return con.execute(sql, [SAE0, tau]).fetchall(), plan["io"]["total_bytes_read"]

    with matched.read() as snap:
        con = snap.con  # one connection: the macro of before is temporary, its own
        con.execute(LINEAGE_EDGES_BEFORE)
        (new, new_bytes), (old, old_bytes) = run(con, "lineage_edges", 0.7), run(con, "lineage_edges_before", 0.7)
        assert new == old != [] and 0 < new_bytes < old_bytes / 2
        (low, _), (low_old, _) = run(con, "lineage_edges", 0.3), run(con, "lineage_edges_before", 0.3)
        assert low == low_old and len(low) >= len(new)
