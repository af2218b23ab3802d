"""The one registry of matching methods: what each compares, which way is better, where its scores live.

Every module that needs a method list, a sort order or a score range asks here, so adding a method is
one entry (docs/design.md, Layers: one registry where a list would be copied).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    higher_is_better: bool
    """Similarities (cosine, correlation) rank high first; distances (MSE) low first."""
    source: str
    """'weights' (atlas match) or 'activations' (atlas correlate)."""
    lo: float
    hi: float
    """The range a score (and so a threshold tau) can take."""
    index_floor: float | None
    """Scores kept in a pair's reverse table file, by feature_b (>= floor); None: distances have none."""
    description: str

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
    Method("decoder_cos", True, "weights", -1.0, 1.0, 0.5, "cosine of decoder rows"),
    Method("decoder_mse", False, "weights", 0.0, float("inf"), None,
           "mean squared difference of threshold-folded decoder rows (SAE Match)"),
    Method("encoder_cos", True, "weights", -1.0, 1.0, 0.5, "cosine of encoder columns"),
    Method("activation_corr", True, "activations", -1.0, 1.0, 0.5,
           "Pearson correlation of activations over shared tokens"),
)}
NAMES: tuple[str, ...] = tuple(METHODS)
SIMILARITY_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.higher_is_better)
WEIGHT_METHODS: tuple[str, ...] = tuple(n for n, m in METHODS.items() if m.source == "weights")


class UnknownMethod(ValueError):
    pass


def method(name: str) -> Method:
    """The registry entry of `name`; UnknownMethod (a ValueError) names the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"unknown method {name!r}; known: {', '.join(NAMES)}") from None


def is_distance(name: str) -> bool:
    """True where lower scores are better."""
    return method(name).is_distance
