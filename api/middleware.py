"""Per-request cost budget as ASGI middleware: a deadline, and cancellation when the client disconnects.

The middleware reads the request's ASGI messages itself and hands them to the app through a queue, so it
sees `http.disconnect` even while a handler runs in a worker thread; then (or at the deadline) it stops the
request's DuckDB cursors and Python loops through the Budget (atlas/budget.py).
"""

from __future__ import annotations

import asyncio
import logging

from litestar import MediaType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from atlas import budget as qb

from .inflight import BoundedSend, ClientStalled, InFlight
from .paths import RETRY_S


class BudgetMiddleware(ASGIMiddleware):
    """A deadline and a disconnect watch per request; the answer's bytes held against the server's byte budget
    (api/inflight.py) and sent as the client reads; OPTIONS answered with every method of its path."""

    def __init__(self, seconds: float, max_bytes_in_flight: int):
        self.seconds = seconds
        self.inflight = InFlight(max_bytes_in_flight)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        refusal = _refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        budget = qb.Budget(self.seconds)
        messages: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            while True:
                message = await receive()
                await messages.put(message)
                if message["type"] == "http.disconnect":
                    budget.cancel()
                    return

        loop = asyncio.get_running_loop()
        reader = loop.create_task(read())
        timer = loop.call_later(self.seconds, budget.expire)
        token = qb.use(budget)
        scope.setdefault("state", {})["budget"] = budget
        bounded = BoundedSend(_allow_all(scope, send), self.inflight, self.seconds, RETRY_S)
        try:
            await next_app(scope, messages.get, bounded)
        except ClientStalled:  # its answer is dropped; the server closes the connection
            pass
        except Exception as exc:  # a stream that failed before its first byte: still an answer in the envelope
            if bounded.started:
                raise
            logging.getLogger("atlas.api").error("%s %s failed", scope["method"], scope["path"], exc_info=exc)
            await _envelope(500, f"internal error ({type(_root(exc)).__name__}); please report it")(scope, receive, send)
        finally:
            qb.reset(token)
            timer.cancel()
            reader.cancel()


def _root(exc: BaseException) -> BaseException:
    """What failed, under the wrappers of Litestar (a failure once a response has begun) and anyio (groups)."""
    while True:
        if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        elif exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            return exc


def _allow_all(scope: Scope, send: Send) -> Send:
    """For OPTIONS: Allow lists every method of the path. Litestar's own OPTIONS answer names only the methods of
    the handlers registered before it (GET and POST of one path in one controller: just the first), while its
    405 names them all."""
    if scope["method"] != "OPTIONS":
        return send
    handler = scope.get("route_handler")
    paths = getattr(handler, "paths", None) or set()
    methods = set()
    for path in paths:
        methods |= set(scope["app"].route_handler_method_map.get(path, {}))

    async def allow(message) -> None:
        if message["type"] == "http.response.start" and methods and message["status"] == 204:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
            message = {**message, "headers": [*headers, (b"allow", ", ".join(sorted(methods)).encode())]}
        await send(message)
    return allow


def _refuse(scope: Scope):
    """An error response for requests no handler should see: a NUL in the path, a POST body that is not JSON."""
    if "\x00" in scope["path"]:
        return _envelope(400, "the path holds a NUL character")
    if scope["method"] == "POST":
        ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != MediaType.JSON.value.encode():
            shown = ctype.decode("latin-1") or "none"
            return _envelope(415, f"POST bodies are JSON: send Content-Type: application/json (got {shown})")
    return None


def _envelope(status: int, message: str):
    import msgspec

    body = msgspec.json.encode({"ok": False, "error": message, "status": status})

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return respond
