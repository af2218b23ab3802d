"""Liveness and the snapshot being served; the explorer page."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency

from atlas.store.schema import SCHEMA_VERSION

from ..state import AtlasState
from ..structs import Health

STATIC = Path(__file__).parent.parent / "static"


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", sync_to_thread=True)
    def health(self, atlas: NamedDependency[AtlasState]) -> Health:
        """Whether the server is up, and which snapshot of which atlas it serves."""
        snap = atlas.snapshot()
        n = snap.cursor().execute("SELECT count(*) FROM saes").fetchone()[0]
        return Health(ok=True, atlas=str(atlas.atlas.path), saes=n, schema_version=SCHEMA_VERSION, snapshot=snap.id)

    @get("/", operation_id="explorer", include_in_schema=False, sync_to_thread=False)
    def explorer(self) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type=MediaType.HTML)
