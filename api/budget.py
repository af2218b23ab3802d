"""Per-request cost budget as ASGI middleware: a deadline, and cancellation when the client disconnects.

The middleware reads the request's ASGI messages itself and hands them to the app through a queue, so it
sees `http.disconnect` even while a handler runs in a worker thread; then (or at the deadline) it stops the
request's DuckDB cursors and Python loops through the Budget (atlas/queries/budget.py).
"""

from __future__ import annotations

import asyncio

from litestar import MediaType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from atlas.queries import budget as qb


class BudgetMiddleware(ASGIMiddleware):
    def __init__(self, seconds: float):
        self.seconds = seconds

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
        try:
            await next_app(scope, messages.get, send)
        finally:
            qb.reset(token)
            timer.cancel()
            reader.cancel()


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
