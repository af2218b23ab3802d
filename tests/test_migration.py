"""Schema versions: a version-1 atlas is upgraded in place by any job, readers refuse a version they do not
serve with a line that says what to do, and a newer atlas is never touched by older code."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from atlas_cli import main
from atlas.queries import layer_pairs, lineage
from atlas.store import SCHEMA_VERSION, Atlas
from atlas.store.schema import SchemaVersionError, check_version

from .conftest import build_atlas

V1_SQL = Path(__file__).parent / "data" / "schema_v1.sql"
STACK = "synth-resid-w256-jumprelu-s0-A"
SAE0 = "synth-resid0-w256-s0-A"
V1_TABLES = ("saes", "features", "matches", "pair_stats", "runs")


def _v1_atlas(path: Path, source: Path) -> dict[str, str]:
    """A version-1 atlas holding the rows of `source` (a current atlas), in version 1's own tables.
    Returns each table's version-1 column list."""
    con = duckdb.connect(str(path))
    con.execute(V1_SQL.read_text())
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
    columns = {}
    for table in V1_TABLES:
        cols = [r[0] for r in con.execute(f"SELECT column_name FROM duckdb_columns() WHERE database_name = "
                                          f"current_database() AND table_name = '{table}' ORDER BY column_index").fetchall()]
        columns[table] = ", ".join(cols)
        con.execute(f"INSERT INTO {table} SELECT {columns[table]} FROM src.{table}")
    con.execute("DETACH src")
    con.close()
    return columns


def _rows(path: Path, table: str, cols: str = "*") -> list:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(f"SELECT {cols} FROM {table} ORDER BY ALL").fetchall()


@pytest.fixture(scope="module")
def current(family, tmp_path_factory) -> Atlas:
    """Two layers of the base stack, matched: the rows the version-1 atlas will hold."""
    atlas = build_atlas(tmp_path_factory.mktemp("current") / "atlas.duckdb", family[1][:2], match=False)
    from atlas.match.pair import MatchParams
    from atlas_ingest.jobs.match import run_match

    run_match(atlas, [(SAE0, "synth-resid1-w256-s0-A")], ["decoder_cos"], MatchParams())
    return atlas


def test_version_1_is_refused_by_readers_then_upgraded_in_place_by_atlas_init(current, tmp_path):
    old = tmp_path / "old.duckdb"
    columns = _v1_atlas(old, current.path)
    before = {t: _rows(old, t, cols) for t, cols in columns.items()}
    assert all(before.values())
    assert _rows(old, "schema_version") == [(1,)]

    with pytest.raises(SchemaVersionError) as err:
        Atlas(old).read()
    assert f"version 1, this code serves version {SCHEMA_VERSION}" in str(err.value) and "atlas migrate" in str(err.value)
    from atlas_api.app import create_app

    with pytest.raises(SchemaVersionError, match="atlas migrate"):  # the server refuses at start, not on the first request
        create_app(old)

    r = CliRunner().invoke(main, ["--atlas", str(old), "migrate"])  # what the message tells the user to type
    assert r.exit_code == 0, r.output
    assert _rows(old, "schema_version") == [(SCHEMA_VERSION,)]
    for table, rows in before.items():  # nothing stored is lost ...
        assert _rows(old, table, columns[table]) == rows, table
    # ... the new columns and tables exist, empty, and every query answers as on the atlas built today
    assert _rows(old, "pair_stats", "matching_score, explained_variance") == [(None, None)]
    assert _rows(old, "examples") == [] and _rows(old, "training") == []
    edge = "sae_a, feature_a, sae_b, feature_b, method, rank_b"  # filled by the v4 step as a fresh match fills it
    assert _rows(old, "matches", edge) == _rows(current.path, "matches", edge)
    with Atlas(old).read() as con, current.read() as ref:
        check_version(con, str(old))
        assert layer_pairs(con, STACK) == layer_pairs(ref, STACK)
        assert lineage(con, SAE0, 3) == lineage(ref, SAE0, 3)
        assert con.execute("SELECT * FROM birth_death(?)", [STACK]).fetchall() == \
            ref.execute("SELECT * FROM birth_death(?)", [STACK]).fetchall()


def test_upgrading_is_idempotent(current, tmp_path):
    old = tmp_path / "old.duckdb"
    _v1_atlas(old, current.path)
    with Atlas(old).write():
        pass
    once = {t: _rows(old, t) for t in (*V1_TABLES, "schema_version") if t != "runs"}
    with Atlas(old).write():
        pass
    assert {t: _rows(old, t) for t in once} == once


def test_a_newer_atlas_is_left_alone_with_one_clear_line(current, tmp_path):
    newer = tmp_path / "newer.duckdb"
    newer.write_bytes(current.path.read_bytes())
    with duckdb.connect(str(newer)) as con:
        con.execute("UPDATE schema_version SET version = ?", [SCHEMA_VERSION + 1])
    data = newer.read_bytes()
    r = CliRunner().invoke(main, ["--atlas", str(newer), "init"])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and f"version {SCHEMA_VERSION + 1}" in r.output and r.output.count("\n") == 1
    assert newer.read_bytes() == data
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        Atlas(newer).read()
