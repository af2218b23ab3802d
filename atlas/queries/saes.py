"""What the atlas holds: its SAEs (a listing, one SAE in sum), stacks, sibling groups, features by label.
The API, the command line (`atlas saes`, `atlas info`) and notebooks read them here."""

from __future__ import annotations

from ..errors import QueryError
from .common import SAE_COLUMNS
from .records import SAE, FoundFeature, SAEDetail, SAESummary, SiblingGroup, Stack


def list_saes(snap, stack: str | None = None, model: str | None = None, limit: int | None = None,
              offset: int = 0) -> list[SAE]:
    """SAEs by stack and layer (all, or one stack's or model's), `limit` from `offset`."""
    rows = sorted((r for r in snap.saes.values() if stack in (None, r["stack"]) and model in (None, r["model"])),
                  key=lambda r: (r["stack"], r["layer"], r["sae_id"]))
    return [SAE.of(r) for r in rows[offset:None if limit is None else offset + limit]]


def sae_summary(snap, sae_id: str) -> SAESummary:
    """One SAE: every column of its saes row, its features in sum, its stored pairs per method."""
    row = {c: snap.sae(sae_id)[c] for c in SAE_COLUMNS}
    n, threshold, density, labelled = snap.execute(
        "SELECT count(*), avg(threshold), avg(density), count(label) FROM features WHERE sae_id = ?", [sae_id]).fetchone()
    pairs = dict(snap.execute("SELECT method, count(*) FROM pair_stats WHERE sae_a = ? OR sae_b = ? GROUP BY 1",
                              [sae_id, sae_id]).fetchall())
    return SAESummary(row=row, n_features=n, mean_threshold=threshold, mean_density=density, n_labelled=labelled,
                      pairs=pairs)


def sae_detail(snap, sae_id: str) -> SAEDetail:
    """One SAE as the API serves it: metadata, labelled features, mean density and stored pairs per method."""
    s = sae_summary(snap, sae_id)
    return SAEDetail(sae=SAE.of(s.row), n_labelled=s.n_labelled, mean_density=s.mean_density, pairs=s.pairs)


def stacks(snap) -> list[Stack]:
    """Stacks: SAEs of one model, site, width, seed and dataset across layers."""
    return snap.records(Stack, "SELECT * FROM stacks ORDER BY stack")


def sibling_groups(snap) -> list[SiblingGroup]:
    """SAEs of one model, hook and width (seeds and datasets side by side): where orphans are counted."""
    return snap.records(SiblingGroup, "SELECT model, hook, d_sae, layer, list(sae_id ORDER BY dataset, seed) AS saes "
                        "FROM saes WHERE sae_id IN (SELECT sae_a FROM sibling_pairs()) GROUP BY ALL "
                        "ORDER BY model, layer, hook, d_sae")


def find_features(snap, text: str, limit: int = 50) -> list[FoundFeature]:
    """Features whose label contains `text` (case-insensitive)."""
    if not text.strip():
        raise QueryError("give some label text to look for")
    return snap.records(FoundFeature, "SELECT f.sae_id, f.feature, s.layer, f.label FROM features f JOIN saes s "
                        "USING (sae_id) WHERE f.label ILIKE '%' || ? || '%' ORDER BY s.stack, s.layer, f.feature LIMIT ?",
                        [text, limit])
