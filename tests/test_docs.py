"""The design document is in the repository, and every code comment pointing to it names a section it has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"


def test_code_points_to_sections_that_exist():
    headings = [line.lstrip("#").strip() for line in DESIGN.read_text().splitlines() if line.startswith("#")]
    for needed in ("Data flow", "Tables", "Lineage", "Orphans", "Permutation-only pairs", "Snapshots"):
        assert any(h.startswith(needed) for h in headings), needed
    pointers = []
    for path in sorted(p for d in ("atlas", "api", "ingest", "bench") for p in (ROOT / d).rglob("*.py")):
        text = path.read_text()
        assert "DESIGN.md" not in text, f"{path}: DESIGN.md is not in the repository; point to docs/design.md"
        pointers += [(path, m) for m in re.findall(r"docs/design\.md, ([A-Z][\w-]*(?: [\w-]+)*)", text)]
    assert len(pointers) >= 4
    for path, section in pointers:
        assert any(h.startswith(section) for h in headings), f"{path}: no section {section!r} in docs/design.md"
