"""Answers in flight: every response body is held against one byte budget that all requests share, and sent in
chunks as fast as its client reads (docs/design.md, Serving memory).

A body leaves the server's memory only once its client has read it (past the transport's small buffer), so a
client that does not read holds its answer. The send below counts each body against the budget from the moment
the app hands it over until its last chunk is written: a body that would pass the budget is a 503 with
Retry-After instead (its response had not started: the start is held until the first body), a client that
takes nothing for `stall_s` is dropped, and chunks go out only as the transport drains (uvicorn waits for
that before each message), so a slow client costs its chunk, not a copy of its whole answer.
"""

from __future__ import annotations

import asyncio

import msgspec
from litestar.types import Message, Send

CHUNK = 64 * 1024
"""Bytes per message handed to the server: the transport's own buffer holds about one chunk per connection."""


class ClientStalled(Exception):
    """The client took nothing for the stall time: its answer is dropped and the connection closed."""


class InFlight:
    """Bytes of response bodies handed over and not yet written to their clients, all requests together
    (touched only on the event loop)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held = 0

    def hold(self, n: int, refuse: bool) -> bool:
        """Count n more bytes; False (nothing counted) when `refuse` and they would pass the budget. A body of at
        most one chunk always passes (the transport holds that much per connection anyway: clients that do not
        read big answers cannot starve /health), and so does one larger than the whole budget when nothing else
        is held, so any answer can be sent."""
        if refuse and n > CHUNK and self.held and self.held + n > self.max_bytes:
            return False
        self.held += n
        return True

    def release(self, n: int) -> None:
        self.held -= n


class BoundedSend:
    """`send` with the response start held until the first body, bodies past the budget refused (503), and
    each body written in CHUNK pieces, each within stall_s (ClientStalled past it). `started`: whether the
    response has begun on the wire (before that, a failure can still be answered in the error envelope)."""

    def __init__(self, send: Send, inflight: InFlight, stall_s: float, retry_after: int):
        self.started = False
        self._send = bounded_send(send, inflight, stall_s, retry_after, self)

    async def __call__(self, message: Message) -> None:
        await self._send(message)


def bounded_send(send: Send, inflight: InFlight, stall_s: float, retry_after: int, state: BoundedSend) -> Send:
    start: Message | None = None
    started = refused = False

    async def piece(message: Message) -> None:
        try:
            await asyncio.wait_for(send(message), stall_s)
        except asyncio.TimeoutError:
            raise ClientStalled(f"the client read nothing for {stall_s:g} s") from None

    async def bounded(message: Message) -> None:
        nonlocal start, started, refused
        if refused:  # the rest of an answer refused with 503
            return
        if message["type"] == "http.response.start" and not started:
            start = message
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        body = message.get("body", b"")
        if not inflight.hold(len(body), refuse=not started):
            started = refused = state.started = True
            start = None
            await _busy(send, inflight, retry_after)
            return
        try:
            if not started:
                started = state.started = True
                await piece(start)
                start = None
            more = message.get("more_body", False)
            if len(body) <= CHUNK:
                await piece(message)
            else:
                for i in range(0, len(body), CHUNK):
                    last = i + CHUNK >= len(body)
                    await piece({"type": "http.response.body", "body": body[i:i + CHUNK],
                                 "more_body": more or not last})
        finally:
            inflight.release(len(body))

    return bounded


async def _busy(send: Send, inflight: InFlight, retry_after: int) -> None:
    message = (f"the server holds {inflight.held / 2**20:,.0f} MB of answers its clients have not read yet (its "
               f"max_bytes_in_flight is {inflight.max_bytes / 2**20:,.0f} MB); try again in a few seconds")
    body = msgspec.json.encode({"ok": False, "error": message, "status": 503})
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(retry_after).encode())]})
    await send({"type": "http.response.body", "body": body})
