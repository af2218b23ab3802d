"""Why a question cannot be answered as asked, by kind: the query layer raises them, api/errors.py gives each
an HTTP status and the command line one line (exit 2)."""

from __future__ import annotations


class QueryError(ValueError):
    """A query that cannot be answered as asked: the message says why (bad parameter, malformed SQL).

    Query errors carry no HTTP status: api/errors.py maps each kind to one."""


class NotFound(QueryError):
    """The SAE, feature, stack or table asked for does not exist."""


class NotAllowed(QueryError):
    """The request asks for something readers may not do (write SQL, read files)."""


class OverBudget(QueryError):
    """The answer would cost more than a bound allows; `bound` names it (e.g. 'max_nodes=2000')."""

    def __init__(self, message: str, bound: str):
        super().__init__(message)
        self.bound = bound


class QueryTimeout(OverBudget):
    """The query ran past its time limit and was stopped."""

    def __init__(self, seconds: float, what: str = "query"):
        super().__init__(f"{what} stopped after the time limit of {seconds:g} s; add filters or a LIMIT",
                         f"time_limit={seconds:g}s")
        self.seconds = seconds


class Cancelled(QueryError):
    """The client went away; the work was stopped."""
