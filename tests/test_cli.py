"""The command line end to end on a tiny family: synth, saes, info, match (incremental), clear errors."""

from __future__ import annotations

from click.testing import CliRunner

from atlas_cli import main


def test_cli_builds_and_queries_an_atlas(tmp_path):
    runner = CliRunner()
    atlas = str(tmp_path / "cli.duckdb")
    r = runner.invoke(main, ["--atlas", atlas, "synth", "--out", str(tmp_path / "s"), "--layers", "3",
                             "--d-in", "128", "--d-sae", "64", "--seeds", "2"])
    assert r.exit_code == 0, r.output
    assert "ingested" in r.output and "11 added" in r.output  # 3 layers x 3 stacks + 2 wider SAEs of layer 1
    r = runner.invoke(main, ["--atlas", atlas, "match", "--pairs", "adjacent"])
    assert r.exit_code == 0 and "matched 6 pair-methods" in r.output, r.output
    again = runner.invoke(main, ["--atlas", atlas, "match", "--pairs", "adjacent"])
    assert "matched 0 pair-methods, skipped 6" in again.output
    r = runner.invoke(main, ["--atlas", atlas, "info", "synth-resid1-w64-s0-A"])
    assert r.exit_code == 0 and "decoder_cos" in r.output and "jumprelu" in r.output
    r = runner.invoke(main, ["--atlas", atlas, "info", "nope"])
    assert r.exit_code == 2 and "error: unknown SAE 'nope'" in r.output
    r = runner.invoke(main, ["--atlas", atlas, "ingest", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no such file or folder" in r.output
    r = runner.invoke(main, ["--atlas", atlas, "match", "--pair", "a-b"])
    assert r.exit_code == 2 and "--pair takes SAE_A:SAE_B" in r.output


def test_every_command_has_help():
    runner = CliRunner()
    for cmd in ([], ["init"], ["synth"], ["ingest"], ["saes"], ["info"], ["match"], ["serve"], ["labels", "import"]):
        r = runner.invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0 and "Usage:" in r.output and "--help" in r.output, cmd
