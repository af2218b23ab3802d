"""The cost budget of one query: a deadline, a cancel flag, and the DuckDB cursors to interrupt.

The server sets one per request (api/middleware.py); query code calls check() between steps of its Python
loops, and cursors opened for the request are interrupted when the deadline passes or the client leaves.
Outside a request there is no budget and check() costs nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time

from .errors import Cancelled, QueryTimeout

_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("atlas_budget", default=None)


class Budget:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.cancelled = False
        self.expired = False
        self._cursors: list = []
        self._lock = threading.Lock()

    def watch(self, cursor):
        """Interrupt `cursor` when this budget runs out; returns it."""
        with self._lock:
            self._cursors.append(cursor)
            stop = self.cancelled or self.expired
        if stop:
            cursor.interrupt()
        return cursor

    def _interrupt(self) -> None:
        with self._lock:
            cursors = list(self._cursors)
        for c in cursors:
            with contextlib.suppress(Exception):  # a closed cursor has nothing left to stop
                c.interrupt()

    def expire(self) -> None:
        self.expired = True
        self._interrupt()

    def cancel(self) -> None:
        self.cancelled = True
        self._interrupt()

    def error(self, what: str = "query") -> Exception:
        """The query error that says why this budget stopped the work."""
        if self.cancelled:
            return Cancelled("the client went away; the query was stopped")
        return QueryTimeout(self.seconds, what)

    def check(self, what: str = "query") -> None:
        if self.cancelled or self.expired or time.monotonic() > self.deadline:
            raise self.error(what)


def current() -> Budget | None:
    return _current.get()


def use(budget: Budget | None) -> contextvars.Token:
    return _current.set(budget)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)


def check(what: str = "query") -> None:
    """Raise QueryTimeout or Cancelled when the current request's budget has run out (no-op outside one)."""
    budget = _current.get()
    if budget is not None:
        budget.check(what)


def watch(cursor):
    """Register a DuckDB cursor with the current budget (if any); returns it."""
    budget = _current.get()
    return budget.watch(cursor) if budget is not None else cursor
