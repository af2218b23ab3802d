"""Every CLI failure is one line (`--debug` for the traceback), and a disk-full job leaves nothing behind."""

from __future__ import annotations

import errno
import os

from click.testing import CliRunner

from atlas_cli import main


def _files(atlas_path):
    folder = atlas_path.with_name(atlas_path.stem + ".files")
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and "leases" not in p.parts)


def test_disk_full_is_one_line_and_cleans_up(tmp_path, family, monkeypatch):
    atlas = tmp_path / "a.duckdb"
    runner = CliRunner()
    ok = runner.invoke(main, ["--atlas", str(atlas), "ingest", str(family[1][0])])
    assert ok.exit_code == 0, ok.output
    before, published = _files(atlas), atlas.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device", str(atlas) + ".publishing")

    monkeypatch.setattr("atlas.store.writer.os.fsync", full)  # the job fails while publishing
    r = runner.invoke(main, ["--atlas", str(atlas), "ingest", str(family[1][1])])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines() if hasattr(r, "stderr") else r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: disk full writing {atlas}.publishing: free some space")
    assert "Traceback" not in r.output
    assert atlas.read_bytes() == published  # nothing stored is lost
    assert _files(atlas) == before  # no working copy, half publish, shard or index file of the failed job
    assert not atlas.with_name(atlas.name + ".publishing").exists()


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    atlas = tmp_path / "a.duckdb"

    def boom(self, final=False):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr("atlas.store.writer.Writer.publish", boom)
    r = CliRunner().invoke(main, ["--atlas", str(atlas), "init"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "error: RuntimeError: something unexpected (run `atlas --debug ...` for the traceback)"]
    debug = CliRunner().invoke(main, ["--atlas", str(atlas), "--debug", "init"])
    assert isinstance(debug.exception, RuntimeError) and debug.exit_code == 1
    assert not os.path.exists(atlas)
