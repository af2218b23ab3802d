"""The Litestar app: JSON API over one atlas, OpenAPI at /schema. Build it with create_app(path, settings)."""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.config.cors import CORSConfig
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.params import Parameter
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from atlas import queries as q
from atlas.queries.common import SAE_COLUMNS, check_feature, sae_row
from atlas.queries.neuronpedia import feature_url
from atlas.queries.records import NotFound, QueryError
from atlas.queries.records import Consistency, WidthPair, WidthTree
from atlas.queries.sqlguard import run_sql
from atlas.queries.widths import consistency, width_pairs, width_tree
from atlas.store.schema import SCHEMA_VERSION

from .settings import Settings
from .state import AtlasState
from .structs import (SAE, Error, FeatureCard, FoundFeature, Health, LayerFlow, LayerPairList, MatchRef, Matrix,
                      OrphanPage, PairMatch, SAEDetail, SAEPage, SearchRequest, SiblingGroup, SQLResult, Stack)

STATIC = Path(__file__).parent / "static"
VENDOR = "/static/vendor"
EXPORTABLE = ("saes", "features", "matches", "pair_stats", "correlations", "compositions", "runs")


def _page_token(offset: int | None) -> str | None:
    return base64.urlsafe_b64encode(str(offset).encode()).decode() if offset is not None else None


def _offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        return max(0, int(base64.urlsafe_b64decode(token.encode()).decode()))
    except (ValueError, UnicodeDecodeError):
        raise QueryError(f"bad page token {token!r}: pass the 'next' value of the previous page") from None


def _sae(row: dict) -> SAE:
    return SAE(**{k: row[k] for k in SAE.__struct_fields__})


def _error(status: int, message: str) -> Response:
    return Response(Error(ok=False, error=message, status=status), status_code=status)


def create_app(atlas_path: str | Path, settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()
    state = AtlasState(Path(atlas_path), settings)
    if not state.atlas.exists():
        raise FileNotFoundError(f"no atlas at {atlas_path}: build one first (make demo, or atlas synth)")
    state.cursor()  # fail at start, with a clear message, on an atlas of another schema version

    @get("/health", operation_id="health", sync_to_thread=True)
    def health() -> Health:
        con = state.cursor()
        n = con.execute("SELECT count(*) FROM saes").fetchone()[0]
        return Health(ok=True, atlas=str(state.atlas.path), saes=n, schema_version=SCHEMA_VERSION,
                      snapshot=state.snapshot)

    @get("/api/saes", operation_id="listSaes", sync_to_thread=True)
    def list_saes(stack: str | None = None, model: str | None = None, cursor: str | None = None) -> SAEPage:
        off, size = _offset(cursor), settings.page_size
        rows = state.cursor().execute(
            f"SELECT {', '.join(SAE_COLUMNS)} FROM saes WHERE (? IS NULL OR stack = ?) AND (? IS NULL OR model = ?) "
            f"ORDER BY stack, layer, sae_id LIMIT ? OFFSET ?", [stack, stack, model, model, size + 1, off]).fetchall()
        items = [_sae(dict(zip(SAE_COLUMNS, r))) for r in rows[:size]]
        return SAEPage(items=items, next=_page_token(off + size) if len(rows) > size else None)

    @get("/api/stacks", operation_id="listStacks", sync_to_thread=True)
    def list_stacks() -> list[Stack]:
        rows = state.cursor().execute("SELECT * FROM stacks ORDER BY stack").fetchall()
        return [Stack(*r) for r in rows]

    @get("/api/saes/{sae_id:str}", operation_id="getSae", sync_to_thread=True)
    def get_sae(sae_id: str) -> SAEDetail:
        con = state.cursor()
        row = sae_row(con, sae_id)
        n_lab, dens = con.execute("SELECT count(label), avg(density) FROM features WHERE sae_id = ?", [sae_id]).fetchone()
        pairs = dict(con.execute("SELECT method, count(*) FROM pair_stats WHERE sae_a = ? OR sae_b = ? GROUP BY 1",
                                 [sae_id, sae_id]).fetchall())
        return SAEDetail(sae=_sae(row), n_labelled=n_lab, mean_density=dens, pairs=pairs)

    @get("/api/saes/{sae_id:str}/features/{feature:int}", operation_id="getFeature", sync_to_thread=True)
    def get_feature(sae_id: str, feature: int, top: int = 5) -> FeatureCard:
        if not 1 <= top <= 50:
            raise QueryError(f"top must be between 1 and 50, got {top}")
        con = state.cursor()
        layers = state.layers(con)
        sae = sae_row(con, sae_id)
        check_feature(sae, feature)
        dec_norm, threshold, density, max_act, label = con.execute(
            "SELECT dec_norm, threshold, density, max_act, label FROM features WHERE sae_id = ? AND feature = ?",
            [sae_id, feature]).fetchone()
        # Outgoing candidates: `matches` is ordered by (sae_a, feature_a), so this reads little. Incoming
        # ones come from the snapshot's in-memory edge index (scores >= its floor, 0.5) for similarity
        # methods, and from SQL for MSE methods.
        rows = con.execute("SELECT method, sae_b, feature_b, score, rank, assigned, 'out' FROM matches "
                           "WHERE sae_a = ? AND feature_a = ? AND rank <= ?", [sae_id, feature, top]).fetchall()
        for method in state.methods(con):
            index = state.edge_index(method, con)
            if index is None:
                rows += con.execute("SELECT method, sae_a, feature_a, score, rank, assigned, 'in' FROM matches "
                                    "WHERE sae_b = ? AND feature_b = ? AND method = ?", [sae_id, feature, method]).fetchall()
            else:
                rows += [(method, e[0], e[1], e[5], e[6], e[7], "in")
                         for e in index.edges(sae_id, [feature], index.names, forward=False)]
        matches: dict[str, list[MatchRef]] = {}
        kept: dict[tuple, int] = {}
        for method, other, f, score, rank, assigned, direction in sorted(rows, key=lambda r: -r[3] if not r[0].endswith(
                "_mse") else r[3]):
            group = (method, other, direction)
            if kept.get(group, 0) < top:  # the best `top` of each other SAE, both directions
                kept[group] = kept.get(group, 0) + 1
                matches.setdefault(method, []).append(MatchRef(other, f, layers[other], score, rank, assigned, direction))
        for refs in matches.values():
            refs.sort(key=lambda m: (m.layer, m.sae_id, m.direction, m.rank))
        cur = con.execute("SELECT kind, activation, tokens, highlight, dataset FROM examples WHERE sae_id = ? "
                          "AND feature = ? ORDER BY kind = 'top' DESC, activation DESC LIMIT 20", [sae_id, feature])
        names = [d[0] for d in cur.description]
        examples = [dict(zip(names, r)) for r in cur.fetchall()]
        return FeatureCard(sae_id=sae_id, feature=feature, layer=sae["layer"], label=label, dec_norm=dec_norm,
                           threshold=threshold, density=density, max_act=max_act,
                           neuronpedia_url=feature_url(sae["neuronpedia_id"], feature),
                           neuronpedia_embed=feature_url(sae["neuronpedia_id"], feature, embed=True),
                           lineage_url=f"/api/saes/{sae_id}/features/{feature}/lineage", matches=matches,
                           examples=examples)

    @get("/api/saes/{sae_id:str}/features/{feature:int}/lineage", operation_id="getLineage", sync_to_thread=True)
    def get_lineage(sae_id: str, feature: int, direction: str = "both", tau: float | None = 0.7,
                    quantile: float | None = None, max_skip: int = 1, method: str = "decoder_cos",
                    include_sites: bool = True, edges: str = "default") -> q.Lineage:
        """edges=default: carry, split, merge and gap edges; edges=all: every candidate above the bar."""
        con = state.cursor()
        return q.lineage(con, sae_id, feature, direction, tau, quantile, max_skip, method, include_sites,
                         index=state.edge_index(method, con), edges=edges)

    @get("/api/saes/{sae_id:str}/features/{feature:int}/width-tree", operation_id="getWidthTree", sync_to_thread=True)
    def get_width_tree(sae_id: str, feature: int) -> WidthTree:
        """The feature in narrower and wider SAEs of its model and hook (atlas match --pairs widths)."""
        return width_tree(state.cursor(), sae_id, feature)

    @get("/api/width-pairs", operation_id="listWidthPairs", sync_to_thread=True)
    def get_width_pairs(model: str = "%") -> list[WidthPair]:
        """Per narrow/wide pair: narrow features kept, split and absent (model: SQL LIKE pattern)."""
        return width_pairs(state.cursor(), model)

    @get("/api/consistency", operation_id="listConsistency", sync_to_thread=True)
    def get_consistency(model: str = "%") -> list[Consistency]:
        """PW-MCC of each sibling pair against its random baseline (model: SQL LIKE pattern)."""
        return consistency(state.cursor(), model)

    @get("/api/neuronpedia/{model_id:str}/{source_id:str}/{index:int}", operation_id="neuronpediaLineage",
         sync_to_thread=True)
    def from_neuronpedia(model_id: str, source_id: str, index: int) -> Redirect:
        """Open the lineage of a Neuronpedia feature (same path as its Neuronpedia page)."""
        row = state.cursor().execute("SELECT sae_id FROM saes WHERE neuronpedia_id = ?", [f"{model_id}/{source_id}"]).fetchone()
        if row is None:
            raise NotFound(f"no SAE in this atlas has neuronpedia_id {model_id}/{source_id}")
        return Redirect(f"/api/saes/{row[0]}/features/{index}/lineage")

    @get("/api/orphans", operation_id="getOrphans", sync_to_thread=True)
    def get_orphans(sae: str, tau: float = 0.7, min_siblings: int = 1, by: str = "any",
                    cursor: str | None = None) -> OrphanPage:
        o = q.orphans(state.cursor(), sae, tau, min_siblings, by)
        off, size = _offset(cursor), settings.page_size
        return OrphanPage(sae_id=o.sae_id, siblings=o.siblings, n_features=o.n_features, n_orphans=o.n_orphans,
                          orphan_frac=o.orphan_frac, orphans=o.orphans[off:off + size],
                          next=_page_token(off + size) if off + size < len(o.orphans) else None)

    @get("/api/layer-pairs", operation_id="listLayerPairs", sync_to_thread=True)
    def get_layer_pairs(stack: str | None = None, method: str = "decoder_cos", min_frac: float = 0.9,
                        min_score: float = 0.9, permutation_only: bool = False) -> LayerPairList:
        items = q.layer_pairs(state.cursor(), stack, method, min_frac, min_score, permutation_only)
        return LayerPairList(items=items, min_frac=min_frac, min_score=min_score, method=method)

    @get("/api/stacks/{stack:str}/matrix", operation_id="getStackMatrix", sync_to_thread=True)
    def get_matrix(stack: str, method: str = "decoder_cos", stat: str = "matched_frac", min_score: float = 0.9) -> Matrix:
        return Matrix(**q.pair_matrix(state.cursor(), stack, method, stat, min_score))

    @get("/api/stacks/{stack:str}/communities", operation_id="getStackCommunities", sync_to_thread=True)
    def get_communities(stack: str, method: str = "decoder_cos", tau: float = 0.7, min_size: int = 2,
                        limit: int = 100) -> list[q.Community]:
        return q.communities(state.cursor(), stack, method, tau, min_size)[:limit]

    @get("/api/stacks/{stack:str}/flow", operation_id="getStackFlow", sync_to_thread=True)
    def get_flow(stack: str, method: str = "decoder_cos", tau: float = 0.7) -> list[LayerFlow]:
        return [LayerFlow(**r) for r in q.birth_death(state.cursor(), stack, method, tau)]

    @get("/api/pairs/{sae_a:str}/{sae_b:str}", operation_id="getPairMatches", sync_to_thread=True)
    def get_pair(sae_a: str, sae_b: str, method: str = "decoder_cos", limit: int = 100) -> list[PairMatch]:
        con = state.cursor()
        sae_row(con, sae_a), sae_row(con, sae_b)
        order = "ASC" if method.endswith("_mse") else "DESC"
        rows = con.execute(f"SELECT feature_a, feature_b, score, rank FROM matches WHERE sae_a = ? AND sae_b = ? "
                           f"AND method = ? AND assigned ORDER BY score {order}, feature_a LIMIT ?",
                           [sae_a, sae_b, method, limit]).fetchall()
        return [PairMatch(*r) for r in rows]

    @get("/api/sibling-groups", operation_id="listSiblingGroups", sync_to_thread=True)
    def get_groups() -> list[SiblingGroup]:
        return [SiblingGroup(**g) for g in q.sibling_groups(state.cursor())]

    @get("/api/features", operation_id="findFeatures", sync_to_thread=True)
    def find(label: str, limit: int = 50) -> list[FoundFeature]:
        return [FoundFeature(**f) for f in q.find_features(state.cursor(), label, min(limit, 500))]

    @get("/", operation_id="explorer", include_in_schema=False)
    async def explorer() -> Response:
        return Response((STATIC / "index.html").read_bytes(), media_type=MediaType.HTML)

    @post("/api/search", operation_id="searchFeatures", sync_to_thread=True, status_code=200)
    def search(data: SearchRequest) -> list[q.Hit]:
        return q.nearest(state.indexes, state.cursor(), data.vector, data.sae_id, data.feature, data.k, data.saes)

    @get("/api/search", operation_id="searchFeaturesGet", sync_to_thread=True)
    def search_get(sae_id: str, feature: int, k: int = 10) -> list[q.Hit]:
        return q.nearest(state.indexes, state.cursor(), None, sae_id, feature, k)

    def _sql(sql: str, fmt: str, limit: int | None) -> Response:
        max_rows = settings.sql_max_rows
        limit = max_rows if limit is None else limit
        if not 0 <= limit <= max_rows:
            raise QueryError(f"_limit must be between 0 and {max_rows} (the server's cap), got {limit}")
        if fmt not in ("json", "csv", "arrow", "parquet"):
            raise QueryError(f"_format must be json, csv, arrow or parquet, got {fmt!r}")
        names, rows, truncated, elapsed = run_sql(state.cursor(), sql, limit, settings.sql_time_limit_s)
        headers = {"X-Truncated": str(truncated).lower()}
        if fmt == "json":
            return Response(SQLResult(columns=names, rows=[list(r) for r in rows], truncated=truncated, limit=limit,
                                      elapsed_ms=elapsed * 1000), headers=headers)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(names)
            w.writerows(rows)
            return Response(buf.getvalue(), media_type="text/csv", headers=headers)
        table = pa.Table.from_pydict({n: [r[i] for r in rows] for i, n in enumerate(names)})
        buf = io.BytesIO()
        if fmt == "arrow":
            with pa.ipc.new_stream(buf, table.schema) as w:
                w.write_table(table)
            return Response(buf.getvalue(), media_type="application/vnd.apache.arrow.stream", headers=headers)
        pq.write_table(table, buf)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet", headers=headers)

    # Explicit thread offload: Litestar's sync_to_thread mishandles a Response-returning handler here.
    @get("/api/sql", operation_id="runSql")
    async def sql_get(sql: str, fmt: str = Parameter(query="_format", default="json"),
                      limit: int | None = Parameter(query="_limit", default=None)) -> Response:
        return await anyio.to_thread.run_sync(_sql, sql, fmt, limit)

    @post("/api/sql", operation_id="runSqlPost", status_code=200)
    async def sql_post(data: dict[str, Any]) -> Response:
        if not isinstance(data.get("sql"), str):
            raise QueryError('POST a JSON object {"sql": "...", "_format": "json", "_limit": 100}')
        return await anyio.to_thread.run_sync(_sql, data["sql"], data.get("_format", "json"), data.get("_limit"))

    @get("/api/export/{name:str}", operation_id="exportTable", sync_to_thread=True)
    def export(name: str) -> Response:
        table, _, ext = name.partition(".")
        if ext != "parquet" or table not in EXPORTABLE:
            raise NotFound(f"export {name!r}: ask for one of {', '.join(t + '.parquet' for t in EXPORTABLE)}")
        reader = state.cursor().sql(f"SELECT * FROM {table}").to_arrow_reader()
        buf = io.BytesIO()
        with pq.ParquetWriter(buf, reader.schema) as w:
            for batch in reader:
                w.write_batch(batch)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{table}.parquet"'})

    def on_query_error(_: Request, exc: QueryError) -> Response:
        return _error(exc.status, str(exc))

    def on_http_error(_: Request, exc: HTTPException) -> Response:
        detail = exc.detail
        if isinstance(exc, ValidationException) and exc.extra:
            detail = f"{exc.detail}: " + "; ".join(f"{e.get('key')}: {e.get('message')}" for e in exc.extra
                                                   if isinstance(e, dict))
        status = 400 if isinstance(exc, ValidationException) else exc.status_code
        return _error(status, detail)

    def on_crash(_: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")

    return Litestar(
        route_handlers=[health, list_saes, list_stacks, get_sae, get_feature, get_lineage, get_width_tree,
                        get_width_pairs, get_consistency, from_neuronpedia,
                        get_orphans, get_layer_pairs, get_matrix, get_communities, get_flow, get_pair, get_groups, find,
                        search, search_get, sql_get, sql_post, export, explorer,
                        create_static_files_router(path="/static", directories=[STATIC], include_in_schema=False)],
        exception_handlers={QueryError: on_query_error, HTTPException: on_http_error, Exception: on_crash},
        openapi_config=OpenAPIConfig(title="Feature Atlas", version="0.1.0", path="/schema",
                                     render_plugins=[SwaggerRenderPlugin(  # vendored: the docs work offline
                                         js_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui-bundle.js",
                                         css_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui.css",
                                         standalone_preset_js_url=f"{VENDOR}/swagger-ui-5.35.0-swagger-ui-standalone-preset.js",
                                         favicon='<link rel="icon" href="data:,">')]),
        cors_config=CORSConfig(allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["Content-Type"]) if settings.cors_origins else None,
        debug=False,
    )


def app_from_env() -> Litestar:
    """Factory for `uvicorn --factory` (atlas serve --workers N): the atlas path comes from $ATLAS_PATH."""
    import json
    import os

    from atlas.store import default_path

    raw = json.loads(os.environ.get("ATLAS_SETTINGS", "{}"))
    if "cors_origins" in raw:
        raw["cors_origins"] = tuple(raw["cors_origins"])
    return create_app(default_path(), Settings(**raw))
