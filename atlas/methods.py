"""The one registry of matching methods: the vectors each compares, which way is better, its name in the atlas.

Adding a method is one entry in METHODS (docs/design.md, Methods); matching, the store, the queries, the API
and the CLI read everything else from it. Weight methods compare `vectors` rows (cosine where higher is
better, ‖a−b‖²/d where lower is); activation methods get their candidates from `atlas correlate`.

Folding (Mechanistic Permutability): W_enc' = W_enc diag(1/θ), b_enc' = b_enc/θ, W_dec' = diag(θ) W_dec,
θ' = 1 leaves a JumpReLU SAE's output unchanged, so decoder row i becomes θ_i · W_dec[i]: a feature that only
fires at large magnitudes is compared at that magnitude. decoder_mse is then
    mse(i, j) = ‖θ_a,i W_dec(A)[i] − θ_b,j W_dec(B)[j]‖² / d_in
and the assignment minimises its sum. SAEs without thresholds are compared on raw decoder rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import QueryError
from .sae import SAEWeights


def folded_decoder(w: SAEWeights) -> np.ndarray:
    """[d_sae, d_in]: row i scaled by threshold i (unchanged without thresholds)."""
    if w.threshold is None:
        return w.W_dec
    return w.W_dec * w.threshold[:, None]


@dataclass(frozen=True)
class Method:
    name: str
    """Its name in the atlas (matches.method, pair_stats.method), the API and the CLI."""
    description: str
    higher_is_better: bool
    """Similarities (cosine, correlation) rank high first; distances (MSE) low first."""
    lo: float
    hi: float
    """The range a score (and so a threshold tau) can take."""
    index_floor: float | None
    """Scores kept in a pair's reverse table file, by feature_b (>= floor); None: distances have none."""
    vectors: Callable[[SAEWeights], np.ndarray] | None = None
    """The rows a weight method compares, [d_sae, d]; None: scores come from activations (atlas correlate)."""
    consistency: bool = False
    """Its pairs also get PW-MCC and MMCS (docs/design.md, Consistency)."""
    tau: float | None = 0.7
    """The default score bar of its questions (lineage, steering, lists, births and deaths); None: a per-pair
    `quantile` instead (distances: their scale differs per layer pair)."""
    quantile: float | None = None
    """The default per-pair bar where `tau` is None: keep the best q of each pair's assigned scores."""

    @property
    def source(self) -> str:
        """'weights' (atlas match) or 'activations' (atlas correlate)."""
        return "weights" if self.vectors else "activations"

    @property
    def is_distance(self) -> bool:
        return not self.higher_is_better

    def sort_key(self, score: float) -> float:
        """Ascending key that puts the best score first."""
        return -score if self.higher_is_better else score

    @property
    def sql_order(self) -> str:
        """ORDER BY direction that puts the best score first."""
        return "DESC" if self.higher_is_better else "ASC"


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("decoder_cos", "cosine of decoder rows", True, -1.0, 1.0, 0.5,
           vectors=lambda w: w.W_dec, consistency=True),
    Method("decoder_mse", "mean squared difference of threshold-folded decoder rows (SAE Match)", False,
           0.0, float("inf"), None, vectors=folded_decoder, tau=None, quantile=0.5),
    Method("encoder_cos", "cosine of encoder columns", True, -1.0, 1.0, 0.5,
           vectors=lambda w: np.ascontiguousarray(w.W_enc.T)),
    Method("activation_corr", "Pearson correlation of activations over shared tokens", True, -1.0, 1.0, 0.5),
)}
DEFAULT = "decoder_cos"
"""The method a question is asked by when it names none."""
NAMES: tuple[str, ...] = tuple(METHODS)
SIMILARITY_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.higher_is_better)
WEIGHT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.source == "weights")
SIBLING_METHODS = ("decoder_cos", "encoder_cos")
"""What siblings are matched by: a feature is shared when both assignments agree (Paulo & Belrose; the
feature_sharing macro; docs/design.md, Words)."""


class UnknownMethod(QueryError):
    pass


def method(name: str) -> Method:
    """The registry entry of `name`; UnknownMethod (a ValueError) names the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; known: {', '.join(NAMES)}") from None


def _entry(m: str | Method) -> Method:
    return m if isinstance(m, Method) else method(m)


@dataclass(frozen=True)
class Threshold:
    """The score bar of a question, made and checked once (`Threshold.of`), then handed down: a fixed `tau` (scores
    at least tau for similarities, at most for distances) or a per-pair `quantile` q (the best q of each layer
    pair's assigned scores; SAE Match: MSE scales differ per pair). docs/design.md, Lineage."""

    method: Method
    tau: float | None = None
    quantile: float | None = None

    @classmethod
    def of(cls, method: str | Method = DEFAULT, tau: float | None = None, quantile: float | None = None,
           per_pair: bool = True) -> "Threshold":
        """The bar of `method` at `tau` or `quantile` (neither: the method's default, from METHODS). A tau must be a
        finite score the method can give (cosines in [-1, 1], MSE >= 0), a quantile within [0, 1]; `per_pair`
        False: the question takes a tau only."""
        m = _entry(method)
        if tau is not None and quantile is not None:
            raise QueryError("give tau or quantile, not both")
        if tau is None and quantile is None:
            tau, quantile = (m.tau, m.quantile) if per_pair or m.tau is not None else (None, None)
            if tau is None and quantile is None:
                raise QueryError(f"give tau for {m.name}: it has no default score bar")
        if quantile is not None:
            if not per_pair:
                raise QueryError("this question takes tau, not a per-pair quantile")
            if not 0 <= quantile <= 1:  # NaN fails too
                raise QueryError(f"quantile must be between 0 and 1, got {quantile}")
        elif not (m.lo <= tau <= m.hi) or not math.isfinite(tau):
            raise QueryError(f"tau for {m.name} must be a number between {m.lo:g} and {m.hi:g}, got {tau}")
        return cls(m, tau, quantile)

    @property
    def label(self) -> str:
        """As answers name it: 'tau=0.7' or 'quantile=0.5 per pair'."""
        return f"quantile={self.quantile} per pair" if self.quantile is not None else f"tau={self.tau}"

    @property
    def q(self) -> float | None:
        """The quantile of a pair's assigned scores that is its bar (the best q: 1 - q of a similarity's)."""
        if self.quantile is None:
            return None
        return self.quantile if self.method.is_distance else 1 - self.quantile

    def passes(self, score, value: float):
        """Whether score(s) pass `value`, this threshold's value for their pair, compared as DOUBLE as SQL compares a
        FLOAT column with a bar."""
        score = np.asarray(score, np.float64)
        return score <= value if self.method.is_distance else score >= value
