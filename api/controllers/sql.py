"""Read-only SQL over the atlas (JSON, CSV, Arrow, Parquet) and whole-table Parquet export."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from litestar.response import Stream

from atlas.errors import NotFound
from atlas import budget
from ..sqlguard import MAX_SQL_CHARS

from ..errors import errors
from ..export import parquet_stream, table_batches
from ..params import also_answers
from ..settings import Settings
from ..sqlanswer import MEDIA
from ..state import AtlasState
from ..structs import SQLFormat, SQLRequest, SQLResult

OTHER_FORMATS = also_answers(*(m for f, m in MEDIA.items() if f != "json"))
EXPORTABLE = ("saes", "features", "matches", "pair_stats", "correlations", "compositions", "runs")

SqlText = Annotated[str, QueryParameter(min_length=1, max_length=MAX_SQL_CHARS, description="One SELECT statement.")]
Format = Annotated[SQLFormat, QueryParameter(name="_format", description="Response format.")]
RowLimit = Annotated[int | None, QueryParameter(name="_limit", ge=0, schema_extra={"minimum": 0},
                                                 description="Most rows; at most the server's cap [default: the cap].")]


async def _sql(atlas: AtlasState, settings: Settings, sql: str, fmt: str, limit: int | None) -> Response:
    """Run the statement on a worker through the SQL routes' own gate (api/sqlpool.py): the worker checks it
    (DuckDB's parser, under a parse time limit of its own), runs it and encodes the answer. Nothing of it runs on
    the event loop, and a flood of slow statements waits there or is refused (503), never holding the threads
    other routes run on."""
    limit = settings.sql_max_rows if limit is None else min(limit, settings.sql_max_rows)  # the server's cap wins
    atlas.check_present()
    body, truncated = await atlas.sql.submit(
        atlas.sql.run, sql, limit, settings.sql_time_limit_s, settings.sql_max_bytes, budget.current(), fmt,
        settings.sql_parse_time_limit_s, retry_after=settings.sql_time_limit_s)
    return Response(body, media_type=MEDIA[fmt], headers={"X-Truncated": str(truncated).lower()})


class SqlController(Controller):
    path = "/api"
    tags = ["sql"]

    @get("/sql", operation_id="runSql", responses=errors(403, 408, 422, 503), operation_class=OTHER_FORMATS)
    async def sql_get(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings], sql: SqlText,
                fmt: Format = "json", limit: RowLimit = None) -> Response[SQLResult]:
        """Run one read-only SELECT; `truncated` says whether rows were left out by the row or byte cap."""
        return await _sql(atlas, settings, sql, fmt, limit)

    @post("/sql", operation_id="runSqlPost", status_code=200, responses=errors(403, 408, 413, 415, 422, 503),
          operation_class=OTHER_FORMATS)
    async def sql_post(self, atlas: NamedDependency[AtlasState], settings: NamedDependency[Settings],
                 data: JSONBody[SQLRequest]) -> Response[SQLResult]:
        """The same as GET /api/sql, for long statements: {"sql": "...", "_format": "json", "_limit": 100}."""
        return await _sql(atlas, settings, data.sql, data.format, data.limit)

    @get("/export/{name:str}", operation_id="exportTable", sync_to_thread=True, responses=errors(404),
         media_type=MEDIA["parquet"])
    def export(self, atlas: NamedDependency[AtlasState],
               name: Annotated[str, PathParameter(max_length=64, description="TABLE.parquet")]) -> Stream:
        """A whole table as Parquet (saes, features, matches, pair_stats, correlations, compositions, runs),
        streamed batch by batch: the server holds about one batch whatever the table's size."""
        table, _, ext = name.partition(".")
        if ext != "parquet" or table not in EXPORTABLE:
            raise NotFound(f"export {name!r}: ask for one of {', '.join(t + '.parquet' for t in EXPORTABLE)}")
        schema, batches = table_batches(atlas.snapshot(), table, atlas.atlas.dir)
        return Stream(parquet_stream(schema, batches), media_type=MEDIA["parquet"],
                      headers={"Content-Disposition": f'attachment; filename="{table}.parquet"'})
