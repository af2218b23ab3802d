"""The Litestar app: JSON API over one atlas, OpenAPI at /schema. Build it with create_app(path, settings).

Routes live in api/controllers (one Controller per area); errors are one envelope (api/errors.py).
"""

from __future__ import annotations

from pathlib import Path

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

import atlas

from . import errors
from .middleware import BudgetMiddleware
from .controllers import CONTROLLERS
from .params import StrictBodySchema
from .paths import Relative
from .settings import Settings
from .state import AtlasState
from .structs import SEARCH_REQUIRES, SearchRequest, SQLRequest

STATIC = Path(__file__).parent / "static"
VENDOR = "/static/vendor"


def create_app(atlas_path: str | Path, settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    state = AtlasState(Path(atlas_path), settings)
    if not state.atlas.exists():
        raise FileNotFoundError(f"no atlas at {atlas_path}: build one first (make demo, or atlas synth)")
    state.snapshot()  # fail at start, with a clear message, on an atlas of another schema version
    fixed_mmap_threshold()

    return Litestar(
        route_handlers=[*CONTROLLERS,
                        create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)],
        dependencies={"atlas": Provide(lambda: state, sync_to_thread=False),
                      "settings": Provide(lambda: settings, sync_to_thread=False)},
        middleware=[BudgetMiddleware(settings.query_time_limit_s, settings.max_bytes_in_flight)],
        state=State({"paths": Relative(atlas_path)}),
        exception_handlers=errors.HANDLERS,
        on_startup=[state.sql.warm],
        on_shutdown=[state.close],
        plugins=[StrictBodySchema(SearchRequest, SQLRequest, extra={SearchRequest: SEARCH_REQUIRES})],
        openapi_config=OpenAPIConfig(title="Feature Atlas", version=atlas.__version__, path="/schema",
                                     render_plugins=[SwaggerRenderPlugin(  # vendored: the docs work offline
                                         js_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui-bundle.js",
                                         css_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui.css",
                                         standalone_preset_js_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui-standalone-preset.js",
                                         favicon='<link rel="icon" href="data:,">')]),
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["Content-Type"]) if settings.cors_origins else None,
        debug=False,
    )


def fixed_mmap_threshold(nbytes: int = 2**20) -> None:
    """Large buffers (answers, Arrow batches) from their own mappings, returned to the OS when freed. glibc
    otherwise raises its mmap threshold to the largest block freed (up to 32 MB), and later answers come from
    a heap that never shrinks: RSS stayed up after clients that do not read had gone (docs/design.md, Serving
    memory)."""
    import ctypes

    try:
        ctypes.CDLL(None).mallopt(-3, nbytes)  # M_MMAP_THRESHOLD; fixing it also stops the dynamic raise
    except (OSError, AttributeError):  # not glibc
        pass


def app_from_env() -> Litestar:
    """Factory for `uvicorn --factory` (atlas serve --workers N): the atlas path comes from $ATLAS_PATH."""
    import json
    import os

    from atlas.store import default_path

    raw = json.loads(os.environ.get("ATLAS_SETTINGS", "{}"))
    if "cors_origins" in raw:
        raw["cors_origins"] = tuple(raw["cors_origins"])
    return create_app(default_path(), Settings(**raw))
