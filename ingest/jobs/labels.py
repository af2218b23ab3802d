"""Import Neuronpedia bulk exports as feature labels and stats.

Layout: v1/{modelId}/{sourceId}/explanations/*.jsonl[.gz] (rows with `index`, `description`) and
v1/{modelId}/{sourceId}/features/batch-*.jsonl[.gz] (`index`, `frac_nonzero`, `maxActApprox`). The
SAE is the one whose neuronpedia_id is {modelId}/{sourceId}, or the one named with `sae_id`.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from atlas.queries.records import NotFound
from atlas.sae import SAEError
from atlas.store import Atlas, record_run


@dataclass
class LabelSummary:
    labels: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    files: int = 0


def _rows(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise SAEError(f"{path}:{n}: not a JSON line ({e})") from None


def export_files(root: Path) -> list[tuple[str, str, Path]]:
    """(kind, neuronpedia_id, file) for every explanations/ and features/ JSONL file under root."""
    files = root.rglob("*.jsonl*") if root.is_dir() else [root]
    out = []
    for f in sorted(files):
        kind = f.parent.name
        if kind in ("explanations", "features"):
            out.append((kind, f"{f.parent.parent.parent.name}/{f.parent.parent.name}", f))
    if not out:
        raise SAEError(f"{root}: no Neuronpedia export files (v1/<model>/<source>/explanations/*.jsonl.gz)")
    return out


def import_labels(atlas: Atlas, root: Path, sae_id: str | None = None) -> LabelSummary:
    summary = LabelSummary()
    with atlas.write() as w, record_run(w, "labels", {"path": str(root), "sae_id": sae_id}):
        for kind, npid, path in export_files(root):
            if sae_id:
                sid = sae_id
            else:
                row = w.con.execute("SELECT sae_id FROM saes WHERE neuronpedia_id = ?", [npid]).fetchone()
                if row is None:
                    raise NotFound(f"{path}: no SAE has neuronpedia_id {npid!r}; ingest it with --neuronpedia-id "
                                   f"or pass --sae")
                sid = row[0]
            rows = list(_rows(path))
            idx = pa.array([int(r["index"]) for r in rows], pa.int32())
            with w.transaction() as con:
                if kind == "explanations":
                    data = pa.table({"feature": idx, "label": pa.array([r.get("description") for r in rows], pa.string())})
                    con.register("incoming", data)
                    con.execute("UPDATE features f SET label = n.label FROM (SELECT feature, first(label) AS label "
                                "FROM incoming WHERE label IS NOT NULL GROUP BY feature) n "
                                "WHERE f.sae_id = ? AND f.feature = n.feature", [sid])
                    summary.labels[sid] = summary.labels.get(sid, 0) + len(rows)
                else:
                    data = pa.table({"feature": idx,
                                     "density": pa.array([r.get("frac_nonzero") for r in rows], pa.float32()),
                                     "max_act": pa.array([r.get("maxActApprox") for r in rows], pa.float32())})
                    con.register("incoming", data)
                    con.execute("UPDATE features f SET density = coalesce(n.density, f.density), "
                                "max_act = coalesce(n.max_act, f.max_act) FROM incoming n "
                                "WHERE f.sae_id = ? AND f.feature = n.feature", [sid])
                    summary.stats[sid] = summary.stats.get(sid, 0) + len(rows)
                con.unregister("incoming")
            summary.files += 1
    return summary
