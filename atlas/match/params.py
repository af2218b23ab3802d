"""The parameters of a matching job as data: one dataclass per kind of job, each field's docstring its help text
(the command line makes its options from them, cli/options.options_from). Light to import: no arrays here."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

from ..methods import DEFAULT


@dataclass(frozen=True)
class MatchParams:
    method: str = DEFAULT
    k: int = 16
    """Candidates kept per feature and direction."""
    floor: float = 0.3
    """Below this cosine (or its MSE equivalent) a feature stays unassigned rather than forced."""
    tau: float = 0.7
    """A pair counts as matched when its score is at least tau (MSE: at most the tau-equivalent)."""
    solver: Literal["auto", "dense", "sparse"] = "auto"
    """One-to-one assignment: dense (scipy's full solver), sparse (over the candidates), auto (dense up to 4096 x
    4096)."""

    def hash(self, sha_a: str, sha_b: str) -> str:
        text = json.dumps([asdict(self), sha_a, sha_b], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WidthParams:
    tau: float = 0.5
    """Least decoder cosine between a wide feature and its parent. Split children of a 2-way split sit
    near 0.7 and of a 3-way one near 0.58, while unrelated directions stay below ~0.3 at d_in ≥ 384."""
    duplicate: float = 0.9
    """Least cosine between every two children for a feature with several children to be a duplicate, not a
    split. Children of a true split share only their parent: cosine at most 0.25 between them in the planted
    family, while its copies sit at ~0.96."""

    def hash(self, sha_a: str, sha_b: str) -> str:
        return hashlib.sha256(json.dumps([asdict(self), sha_a, sha_b]).encode()).hexdigest()[:16]
