"""Feature Atlas: how SAE features survive, change, split, die and are born across layers and seeds.

`atlas.open(path)` reads an atlas from Python (atlas/notebook.py); importing `atlas` alone loads nothing else."""

__version__ = "0.1.0"  # the package version (pyproject.toml reads it; `atlas --version` prints it)


def open(path="atlas.duckdb"):  # noqa: A001  (atlas.open, as files are opened)
    """A Notebook on the atlas at `path`: every data route of the API, answered with its typed records."""
    from .notebook import Notebook

    return Notebook(path)
