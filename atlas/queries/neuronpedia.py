"""Links to Neuronpedia feature pages: https://www.neuronpedia.org/{modelId}/{sourceId}/{index}."""

from __future__ import annotations

BASE = "https://www.neuronpedia.org"


def feature_url(neuronpedia_id: str | None, feature: int, embed: bool = False) -> str | None:
    if not neuronpedia_id:
        return None
    return f"{BASE}/{neuronpedia_id.strip('/')}/{feature}" + ("?embed=true" if embed else "")
