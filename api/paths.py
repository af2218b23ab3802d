"""Paths as the API shows them: relative to the atlas's folder, in answers and in errors (docs/design.md,
Read-only SQL), and what to do about a part of the atlas that is not there (docs/design.md, Honest answers).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

RETRY_S = 5
"""Retry-After of a 503 for an atlas, or a part of one, that is not where the server found it."""


class Relative:
    """Rewrites the atlas's folder out of text: '/srv/data/atlas.files/tables/x' -> 'atlas.files/tables/x'."""

    def __init__(self, atlas_path: str | Path):
        path = Path(atlas_path)
        roots = {str(path.parent.resolve()), str(path.absolute().parent), os.path.realpath(path.parent)}
        self.roots = sorted((r.rstrip(os.sep) + os.sep for r in roots if r not in ("", os.sep)), key=len, reverse=True)
        # the folder itself too, where text names it without a separator after it (DuckDB's clipped echo of
        # a statement): '.'
        self._bare = re.compile("|".join(re.escape(r.rstrip(os.sep)) + r"(?![\w-])" for r in self.roots)) \
            if self.roots else None

    def text(self, s: str) -> str:
        for root in self.roots:
            s = s.replace(root, "")
        return self._bare.sub(".", s) if self._bare is not None else s

    def value(self, v):
        """Strings anywhere in a result value (lists, structs, maps) made relative; other values as they are."""
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, (list, tuple)):
            return type(v)(self.value(x) for x in v)
        if isinstance(v, dict):
            return {self.value(k): self.value(x) for k, x in v.items()}
        return v

    def rows(self, rows: list) -> list:
        return [self.value(r) for r in rows]

    def path_in(self, text: str) -> str | None:
        """The first path under the atlas's folder that `text` names (an error message), absolute."""
        for root in self.roots:
            m = re.search(re.escape(root) + r"[^\s'\"]+", text)
            if m:
                return m.group(0).rstrip(".,:;)")
        return None


def missing(rel: str) -> str:
    """The 503 message for a file of the atlas that is not there, with what to do."""
    if rel.endswith(".faiss"):
        fix = "re-ingest its SAE (`atlas ingest ... --replace`) to rebuild its index"
    elif rel.endswith(".idx"):
        fix = "`atlas migrate` rewrites missing edge indexes"
    else:
        fix = ("`atlas migrate` names every missing table file (restore them: an atlas is its DuckDB file and its "
               ".files/ folder)")
    return (f"part of the atlas is not there: {rel} (moved or deleted?); if its .files/ folder was moved, move it "
            f"back beside the DuckDB file; {fix}")
