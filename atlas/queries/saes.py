"""What the atlas holds: its SAEs (a listing, one SAE in sum), stacks, sibling groups, features by label.
The API, the command line (`atlas saes`, `atlas info`) and notebooks read them here."""

from __future__ import annotations

from .common import SAE_COLUMNS, sae_row
from .records import SAE, FoundFeature, SAEDetail, SAESummary, SiblingGroup, Stack
from ..errors import QueryError


def list_saes(con, stack: str | None = None, model: str | None = None, limit: int | None = None,
              offset: int = 0) -> list[SAE]:
    """SAEs by stack and layer (all, or one stack's or model's), `limit` from `offset`."""
    rows = con.execute(
        f"SELECT {', '.join(SAE_COLUMNS)} FROM saes WHERE (? IS NULL OR stack = ?) AND (? IS NULL OR model = ?) "
        f"ORDER BY stack, layer, sae_id LIMIT ? OFFSET ?", [stack, stack, model, model, limit, offset]).fetchall()
    return [SAE.of(dict(zip(SAE_COLUMNS, r))) for r in rows]


def sae_summary(con, sae_id: str) -> SAESummary:
    """One SAE: every column of its saes row, its features in sum, its stored pairs per method."""
    row = sae_row(con, sae_id)
    n, threshold, density, labelled = con.execute(
        "SELECT count(*), avg(threshold), avg(density), count(label) FROM features WHERE sae_id = ?", [sae_id]).fetchone()
    pairs = dict(con.execute("SELECT method, count(*) FROM pair_stats WHERE sae_a = ? OR sae_b = ? GROUP BY 1",
                             [sae_id, sae_id]).fetchall())
    return SAESummary(row=row, n_features=n, mean_threshold=threshold, mean_density=density, n_labelled=labelled,
                      pairs=pairs)


def sae_detail(con, sae_id: str) -> SAEDetail:
    """One SAE as the API serves it: metadata, labelled features, mean density and stored pairs per method."""
    s = sae_summary(con, sae_id)
    return SAEDetail(sae=SAE.of(s.row), n_labelled=s.n_labelled, mean_density=s.mean_density, pairs=s.pairs)


def stacks(con) -> list[Stack]:
    """Stacks: SAEs of one model, site, width, seed and dataset across layers."""
    return [Stack(*r) for r in con.execute("SELECT * FROM stacks ORDER BY stack").fetchall()]


def sibling_groups(con) -> list[SiblingGroup]:
    """SAEs of one model, hook and width (seeds and datasets side by side): where orphans are counted."""
    rows = con.execute("SELECT model, hook, d_sae, layer, list(sae_id ORDER BY dataset, seed) FROM saes "
                       "GROUP BY ALL HAVING count(*) > 1 ORDER BY model, layer, hook, d_sae").fetchall()
    return [SiblingGroup(*r) for r in rows]


def find_features(con, text: str, limit: int = 50) -> list[FoundFeature]:
    """Features whose label contains `text` (case-insensitive)."""
    if not text.strip():
        raise QueryError("give some label text to look for")
    rows = con.execute("SELECT f.sae_id, f.feature, s.layer, f.label FROM features f JOIN saes s USING (sae_id) "
                       "WHERE f.label ILIKE '%' || ? || '%' ORDER BY s.stack, s.layer, f.feature LIMIT ?",
                       [text, limit]).fetchall()
    return [FoundFeature(*r) for r in rows]
