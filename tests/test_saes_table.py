"""`atlas saes` in an 80-column terminal keeps whole cells (it used to squeeze every one to "syn…"); piped, it
prints every column."""

from __future__ import annotations

from click.testing import CliRunner
from rich.console import Console

from atlas_cli import main
from atlas_cli.saes import COLUMNS, fit_columns, saes_table


def _cells(atlas):
    from atlas.queries.saes import list_saes

    with atlas.read() as con:
        rows = list_saes(con)
    return [{c: "" if getattr(r, c) is None else str(getattr(r, c)) for c in COLUMNS} for r in rows]


def test_a_narrow_terminal_shows_whole_cells_and_names_the_columns_left_out(synth_atlas):
    cells = _cells(synth_atlas)
    for width in (80, 120, 400):
        shown, left = fit_columns(cells, width)
        console = Console(width=width, record=True, force_terminal=True)
        console.print(saes_table(cells, shown))
        text = console.export_text()
        assert "…" not in text and max(map(len, text.splitlines())) <= width
        assert all(r["sae_id"] in text for r in cells)  # every id whole
        assert shown[:3] == ["sae_id", "layer", "d_sae"] and set(shown) | set(left) <= set(COLUMNS)
        if width == 400:
            assert not left and "stack" in shown
    assert fit_columns(cells, 80)[1]  # at 80 columns something had to go, and is named


def test_piped_output_is_every_column_tab_separated(synth_atlas):
    r = CliRunner().invoke(main, ["--atlas", str(synth_atlas.path), "saes"])
    assert r.exit_code == 0, r.output
    lines = [line.split("\t") for line in r.output.splitlines()]
    assert lines[0] == list(COLUMNS) and len(lines) == 1 + len(_cells(synth_atlas))
    assert all(len(line) == len(COLUMNS) for line in lines)
