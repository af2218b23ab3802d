"""Feature labels: imported from Neuronpedia exports (with stats and top-activation examples), or made from the
tokens a feature fires on (label_by_tokens, for SAEs no one has explained).

Layouts read: the bulk export tree v1/{modelId}/{sourceId}/{explanations,features,activations}/*.jsonl[.gz],
any of those folders synced alone, `explanations-<explainer>/` folders, and the JSON array that the
explanation export API returns (*.json[.gz]). Each row is matched to an SAE by its own `modelId` and
`layer` (Neuronpedia's sourceId) where it has them, else by the folder names; the SAE is the one whose
neuronpedia_id is `{modelId}/{layer}`, or the one named with `sae_id`.

With several explanations per feature, one explainer is chosen per SAE (`explainer`, or the one that
labels the most features), and the others only fill features it leaves unlabelled.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from atlas.queries.common import require_saes
from atlas.errors import NotFound
from atlas.sae import SAEError
from atlas.store import Atlas, record_run

KINDS = ("explanations", "features", "activations")


@dataclass
class LabelSummary:
    labels: dict[str, int] = field(default_factory=dict)  # sae_id -> features labelled
    explainers: dict[str, str] = field(default_factory=dict)  # sae_id -> explainer chosen
    stats: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    files: int = 0


@dataclass(frozen=True)
class ExportFile:
    path: Path
    kind: str | None  # explanations | features | activations; None: decided by the rows (JSON arrays)
    explainer: str | None  # from an explanations-<explainer>/ folder
    npid: str | None  # modelId/sourceId from the folder names, where they say it


def read_rows(path: Path) -> list[dict]:
    """JSON lines, or one JSON array (the export API), plain or gzipped; each row must be an object."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SAEError(f"{path}: not a readable export file ({e})") from None
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise SAEError(f"{path}: not a JSON array ({e})") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SAEError(f"{path}:{n}: not a JSON line ({e})") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or "index" not in r), None)
    if bad is not None:
        raise SAEError(f"{path}: row {bad + 1} is not an object with an 'index'")
    return rows


def export_files(root: Path) -> list[ExportFile]:
    """Every export file under root (or root itself), with what its folder names say."""
    files = [root] if root.is_file() else sorted(p for pat in ("*.jsonl", "*.jsonl.gz", "*.json", "*.json.gz")
                                                   for p in root.rglob(pat))
    out = []
    for f in files:
        folder = f.parent.name
        kind = "explanations" if folder.startswith("explanations") else folder if folder in KINDS else None
        if kind is None and not f.name.endswith((".json", ".json.gz")):
            continue
        explainer = folder[len("explanations-"):] or None if folder.startswith("explanations-") else None
        npid = f"{f.parent.parent.parent.name}/{f.parent.parent.name}" if kind and len(f.parents) > 2 else None
        out.append(ExportFile(f, kind, explainer, npid))
    if not out:
        raise SAEError(f"{root}: no Neuronpedia export files (v1/<model>/<source>/explanations/*.jsonl.gz, "
                       f"explanations-<explainer>/, or an export API .json array)")
    return out


def _row_kind(row: dict) -> str:
    if "description" in row:
        return "explanations"
    if "tokens" in row and "values" in row:
        return "activations"
    return "features"


class _Resolver:
    """modelId/sourceId -> sae_id, through the atlas's neuronpedia ids (or one SAE for everything)."""

    def __init__(self, con, sae_id: str | None):
        self.fixed = sae_id
        require_saes({r[0] for r in con.execute("SELECT sae_id FROM saes").fetchall()}, [sae_id] if sae_id else [])
        self.by_npid = dict(con.execute("SELECT neuronpedia_id, sae_id FROM saes WHERE neuronpedia_id IS NOT NULL").fetchall())

    def __call__(self, row: dict, f: ExportFile) -> str:
        if self.fixed:
            return self.fixed
        npid = f"{row['modelId']}/{row['layer']}" if row.get("modelId") and row.get("layer") else f.npid
        if npid is None:
            raise SAEError(f"{f.path}: rows carry no modelId/layer and the folders do not name one; pass --sae")
        if npid not in self.by_npid:
            raise NotFound(f"{f.path}: no SAE has neuronpedia_id {npid!r}; set it with "
                           f"`atlas saes set SAE --neuronpedia-id {npid}` or pass --sae")
        return self.by_npid[npid]


def import_labels(atlas: Atlas, root: Path, sae_id: str | None = None, explainer: str | None = None) -> LabelSummary:
    summary = LabelSummary()
    files = export_files(root)
    with atlas.write() as w, record_run(w, "labels", {"path": str(root), "sae_id": sae_id, "explainer": explainer}) as run:
        resolve = _Resolver(w.con, sae_id)
        explanations: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # sae -> (feature, explainer, text)
        stats: dict[str, list[dict]] = defaultdict(list)
        examples: dict[str, list[dict]] = defaultdict(list)
        for f in files:
            for row in read_rows(f.path):
                sid = resolve(row, f)
                kind = f.kind or _row_kind(row)
                if kind == "explanations":
                    if row.get("description"):
                        who = row.get("explanationModelName") or row.get("typeName") or f.explainer or "unknown"
                        explanations[sid].append((int(row["index"]), str(who), str(row["description"])))
                elif kind == "activations" or (kind == "features" and "tokens" in row and "values" in row):
                    examples[sid].append(row)
                if kind == "features":
                    stats[sid].append(row)
            summary.files += 1
        if explainer and not any(e == explainer for rows in explanations.values() for _, e, _ in rows):
            found = sorted({e for rows in explanations.values() for _, e, _ in rows})
            raise SAEError(f"{root}: no explanations by {explainer!r}; found: {', '.join(found) or 'none'}")
        with w.transaction():
            for sid, rows in explanations.items():
                chosen, labels = choose_labels(rows, explainer)
                summary.labels[sid] = w.update_features(sid, pa.table({
                    "feature": pa.array(list(labels), pa.int32()), "label": pa.array(list(labels.values()), pa.string())}))
                summary.explainers[sid] = chosen
            for sid, rows in stats.items():
                summary.stats[sid] = w.update_features(sid, pa.table({
                    "feature": pa.array([int(r["index"]) for r in rows], pa.int32()),
                    "density": pa.array([r.get("frac_nonzero") for r in rows], pa.float32()),
                    "max_act": pa.array([r.get("maxActApprox") for r in rows], pa.float32())}))
            for sid, rows in examples.items():
                summary.examples[sid] = _store_examples(w, sid, rows, run)
    return summary


def choose_labels(rows: list[tuple[int, str, str]], explainer: str | None) -> tuple[str, dict[int, str]]:
    """One label per feature: the chosen explainer's (given, or the one labelling most features), then
    the others' for features it leaves out, in order of coverage; ties by name, then by text."""
    by: dict[str, dict[int, str]] = defaultdict(dict)
    for feature, who, text in sorted(rows):
        by[who].setdefault(feature, text)
    if explainer:
        return explainer, dict(by.get(explainer, {}))
    order = sorted(by, key=lambda e: (-len(by[e]), e))
    labels: dict[int, str] = {}
    for who in reversed(order):
        labels.update(by[who])
    return order[0], labels


def _store_examples(w, sid: str, rows: list[dict], run_id: str) -> int:
    """Neuronpedia's top activations as `top` examples: the context's tokens, the firing position, its value."""
    out = []
    for r in rows:
        tokens, values = list(r.get("tokens") or []), list(r.get("values") or [])
        if not tokens or len(values) != len(tokens):
            continue
        at = r.get("maxValueTokenIndex")
        at = int(at) if isinstance(at, int) and 0 <= at < len(tokens) else max(range(len(values)), key=values.__getitem__)
        out.append(dict(sae_id=sid, feature=int(r["index"]), kind="top", activation=float(r.get("maxValue", values[at])),
                        token=-1, tokens=[str(t) for t in tokens], highlight=at, dataset="neuronpedia", run_id=run_id))
    w.replace_examples(sid, "neuronpedia", out)
    return len(out)


def label_by_tokens(atlas: Atlas, sae_id: str, encode, x, token_ids, doc, tokenizer, d_sae: int) -> int:
    """Label one SAE's features by the tokens they fire on far more than the corpus has them (atlas_ingest.token_labels),
    from activations x [T, d_in] at its hook and the tokens they came from; features with a label (a Neuronpedia
    import) keep it. Returns the features labelled."""
    from atlas_ingest.token_labels import firing_counts, lift_labels

    feats, toks, counts, n_f, _, at = firing_counts(encode, x, token_ids, d_sae)
    labels = lift_labels(feats, toks, counts, n_f, at, token_ids, doc, tokenizer.convert_ids_to_tokens)
    with atlas.write() as w, record_run(w, "token-labels", {"sae_id": sae_id, "tokens": len(token_ids)}):
        have = {r[0] for r in w.con.execute("SELECT feature FROM features WHERE sae_id = ? AND label IS NOT NULL",
                                            [sae_id]).fetchall()}
        new = {f: text for f, text in labels.items() if f not in have}
        if not new:
            return 0
        return w.update_features(sae_id, pa.table({"feature": pa.array(list(new), pa.int32()),
                                                   "label": pa.array(list(new.values()), pa.string())}))
