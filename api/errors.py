"""One error envelope, {ok: false, error, status}, sent for every failure and documented on every route.

atlas/ raises query errors by kind (records.py); this module is the one place that gives them HTTP codes.
"""

from __future__ import annotations

import logging
import os
from http import HTTPStatus
from typing import Literal, get_args, get_origin

import duckdb
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from atlas.errors import Cancelled, NotAllowed, NotFound, OverBudget, QueryError, QueryTimeout

from .paths import RETRY_S, missing
from .sqlpool import Unavailable


class Error(msgspec.Struct):
    """Every error answer: `error` says what went wrong and what to do."""

    ok: bool
    error: str
    status: int


# Most specific first: the first class the exception is an instance of gives the status.
STATUS: list[tuple[type[QueryError], int]] = [
    (Unavailable, 503),
    (NotFound, 404),
    (NotAllowed, 403),
    (QueryTimeout, 408),
    (OverBudget, 422),
    (Cancelled, 499),
    (QueryError, 400),
]

_WHEN = {
    400: "Bad parameter or request body (the message names it)",
    403: "Not allowed for readers (writing SQL, reading files)",
    404: "Unknown SAE, feature, stack, table or path",
    405: "Method not allowed on this path",
    408: "Stopped at the time limit (the message names it)",
    413: "Request body too large",
    415: "Request body is not application/json",
    422: "The answer would exceed a bound (nodes, edges, bytes; the message names it)",
    503: "Busy (the SQL queue or the bytes in flight are full), or the atlas or a part of it is not there now "
         "(the message names it): try again after Retry-After seconds",
}


def errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses of a route: the error envelope under each status it can answer (400 always; 503 always:
    every route reads the atlas, whose folder may be moved away while the server runs)."""
    return {c: ResponseSpec(Error, description=_WHEN.get(c, HTTPStatus(c).phrase), generate_examples=False)
            for c in sorted({400, 503, *codes})}


def error_response(status: int, message: str) -> Response:
    return Response(Error(ok=False, error=message, status=status), status_code=status)


def _relative(request: Request):
    """The app's Relative (api/paths.py): errors show paths relative to the atlas's folder."""
    return request.app.state.get("paths")


def on_query_error(request: Request, exc: QueryError) -> Response:
    paths = _relative(request)
    message = paths.text(str(exc)) if paths is not None else str(exc)
    response = error_response(next(code for cls, code in STATUS if isinstance(exc, cls)), message)
    if getattr(exc, "retry_after", None) is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _choices(request: Request, key: str | None) -> str:
    """' (one of a, b, c)' where parameter `key` of the route is a Literal; '' otherwise."""
    try:
        field = request.route_handler.parsed_fn_signature.parameters[key]
    except (AttributeError, KeyError, TypeError):
        return ""
    for t in (field.annotation, *get_args(field.annotation)):
        if get_origin(t) is Literal:
            return f" (one of {', '.join(map(str, get_args(t)))})"
    return ""


def on_http_error(request: Request, exc: HTTPException) -> Response:
    detail = exc.detail
    if isinstance(exc, ValidationException):
        problems = [f"{e.get('key')}: {e.get('message')}"
                    + (_choices(request, e.get("key")) if "enum" in str(e.get("message")) else "")
                    for e in exc.extra or [] if isinstance(e, dict)]
        detail = "; ".join(problems) if problems else detail
        return error_response(400, detail)
    static = request.url.path.startswith("/static/")
    if static and exc.status_code == 404:  # Litestar's message may name the server's folders
        detail = f"no static file {request.url.path}"
    response = error_response(exc.status_code, detail)
    response.headers.update(exc.headers or {})  # Allow of a 405, Retry-After, ...
    if exc.status_code == 405 and "allow" not in {k.lower() for k in response.headers}:
        response.headers["Allow"] = "GET, HEAD" if static else "GET"
    return response


def on_interrupt(request: Request, exc: duckdb.InterruptException) -> Response:
    """A DuckDB query stopped by the request's budget: the deadline passed or the client left."""
    budget = request.scope.get("state", {}).get("budget")
    err = budget.error() if budget is not None else QueryTimeout(0)
    return on_query_error(request, err)


def on_out_of_memory(request: Request, exc: duckdb.OutOfMemoryException) -> Response:
    return on_query_error(request, OverBudget("the query needs more memory than the server's memory_limit; "
                                              "ask for less (filters, a LIMIT)", "memory_limit"))


def on_too_deep(request: Request, exc: RecursionError) -> Response:
    """msgspec gives up on JSON nested deeper than Python's recursion limit: a client mistake, not a crash."""
    return error_response(400, "the request body is nested too deeply")


def on_missing_file(request: Request, exc: Exception) -> Response:
    """A file of the atlas that is not there (its .files/ folder moved, a table or index file deleted) while a
    request reads it: 503 naming it and what to do, never a 500 (docs/design.md, Honest answers)."""
    paths = _relative(request)
    path = paths.path_in(f"{getattr(exc, 'filename', '') or ''} {exc}") if paths is not None else None
    if path is not None and not os.path.exists(path):
        return on_query_error(request, Unavailable(missing(paths.text(path)), RETRY_S))
    return on_crash(request, exc)


def on_crash(request: Request, exc: Exception) -> Response:
    # No internals to the client: the type is enough to report it; the server log has the traceback.
    logging.getLogger("atlas.api").error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); please report it")


HANDLERS = {QueryError: on_query_error, HTTPException: on_http_error, duckdb.InterruptException: on_interrupt,
            duckdb.OutOfMemoryException: on_out_of_memory, RecursionError: on_too_deep,
            FileNotFoundError: on_missing_file, duckdb.IOException: on_missing_file, Exception: on_crash}
