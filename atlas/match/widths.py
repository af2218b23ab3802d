"""Feature splitting across dictionary sizes: a narrow SAE's features against a wider sibling's.

Each wide feature's *parent* is its best narrow feature by decoder cosine, when that cosine is ≥ tau
(not one-to-one: a narrow feature may be the parent of several). A narrow feature's *children* are the
wide features whose parent it is. Classes (Bricken et al. 2023; Leask et al. 2025; Chanin et al. 2024):
  kept       one child;
  split      two or more children; `combo_cos` = cosine of the parent with the best non-negative
             combination of its children (≈ 1 when the parent is their sum);
  duplicate  two or more children that are near-copies of one another (every pair of children at
             cosine ≥ `duplicate`, `min_child_cos` the least): the wider SAE repeats the feature rather
             than refining it, which short training leaves behind (README, Feature splitting);
  absent     no child (dropped or absorbed into other features).
Wide features without a parent are *novel*. A pure function of the two decoders: it reads and writes nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.optimize import nnls

from ..index import unit_rows
from .candidates import topk_both
from .params import WidthParams

SCHEMA = pa.schema([
    ("feature_a", pa.int32()), ("class", pa.string()), ("n_children", pa.int32()),
    ("children", pa.list_(pa.int32())), ("scores", pa.list_(pa.float32())), ("combo_cos", pa.float32()),
    ("best_feature", pa.int32()), ("best_score", pa.float32()), ("min_child_cos", pa.float32())])


def combo_cosine(parent: np.ndarray, children: np.ndarray) -> float:
    """Cosine of `parent` [d] with its best non-negative combination of `children` [g, d]."""
    x, _ = nnls(children.T.astype(np.float64), parent.astype(np.float64))
    fit = children.T.astype(np.float64) @ x
    norm = np.linalg.norm(fit) * np.linalg.norm(parent)
    return float(fit @ parent / norm) if norm > 0 else 0.0


def match_widths(narrow: np.ndarray, wide: np.ndarray, params: WidthParams = WidthParams()) -> pa.Table:
    """One row per narrow feature (SCHEMA): its class, children (best first) with cosines, the cosine of
    its best non-negative combination of children, its best wide feature whatever the class, and the least
    cosine between two of its children."""
    if narrow.shape[1] != wide.shape[1]:
        raise ValueError(f"decoders of different d_in ({narrow.shape[1]} vs {wide.shape[1]}) cannot be compared")
    c = topk_both(narrow, wide, k=1)
    parent, pscore = c.b2a_index[:, 0], c.b2a_score[:, 0]
    ok = pscore >= params.tau
    kids = np.flatnonzero(ok)
    kids = kids[np.lexsort((-pscore[kids], parent[kids]))]  # by parent, best child first
    starts = np.searchsorted(parent[kids], np.arange(len(narrow) + 1))
    unit_n, unit_w = unit_rows(narrow, narrow.dtype), unit_rows(wide, wide.dtype)
    children, scores, combo, twins, cls = [], [], [], [], []
    for i in range(len(narrow)):
        mine = kids[starts[i]:starts[i + 1]]
        children.append(mine.tolist())
        scores.append(pscore[mine].tolist())
        combo.append(combo_cosine(unit_n[i], unit_w[mine]) if len(mine) else None)
        twins.append(float((unit_w[mine] @ unit_w[mine].T).min()) if len(mine) > 1 else None)
        cls.append("absent" if len(mine) == 0 else "kept" if len(mine) == 1 else
                   "duplicate" if twins[-1] >= params.duplicate else "split")
    return pa.table({
        "feature_a": pa.array(np.arange(len(narrow)), pa.int32()), "class": pa.array(cls),
        "n_children": pa.array([len(k) for k in children], pa.int32()),
        "children": pa.array(children, pa.list_(pa.int32())), "scores": pa.array(scores, pa.list_(pa.float32())),
        "combo_cos": pa.array(combo, pa.float32()), "best_feature": pa.array(c.a2b_index[:, 0], pa.int32()),
        "best_score": pa.array(c.a2b_score[:, 0], pa.float32()),
        "min_child_cos": pa.array(twins, pa.float32())}, schema=SCHEMA)
