"""The `atlas` command line: one module per command area, each registering its commands on `main`.

The one package that wires atlas/, ingest/ and api/ together; jobs and the server are imported inside each
command, so `atlas --help` stays fast (docs/design.md, Layers).
"""

from . import ablation, build, findings, match, neuronpedia, saes, serve  # noqa: F401
from .group import main

__all__ = ["main"]
