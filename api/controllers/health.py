"""Liveness, the snapshot being served and the build still adding to it; the explorer page."""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency

from atlas.status import BuildStatus, read_status
from atlas.store.schema import SCHEMA_VERSION

from ..errors import errors
from ..state import AtlasState
from ..structs import Health

STATIC = Path(__file__).parent.parent / "static"


class HealthController(Controller):
    tags = ["health"]

    @get("/health", operation_id="health", sync_to_thread=True, responses=errors(503))
    def health(self, atlas: NamedDependency[AtlasState]) -> Health:
        """Whether the server is up, and which snapshot of which atlas it serves."""
        snap = atlas.snapshot()
        return Health(ok=True, atlas=atlas.atlas.path.name, saes=len(snap.saes), schema_version=SCHEMA_VERSION,
                      snapshot=snap.id)

    @get("/api/build", operation_id="getBuild", sync_to_thread=True, responses=errors())
    def build(self, atlas: NamedDependency[AtlasState]) -> BuildStatus:
        """How far the build writing into this atlas has come (`atlas demo`, `atlas minilm`): each step's done
        of total (null: not started) and its last item; state running, done, stopped, failed, or none when no
        build has run here. What it has published is already served."""
        return read_status(atlas.atlas.path) or BuildStatus(steps=[], state="none", pid=0, started=0, updated=0)

    @get("/", operation_id="explorer", include_in_schema=False, sync_to_thread=False)
    def explorer(self) -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type=MediaType.HTML)
