"""Read-only SQL for untrusted users: statement allow-list, a locked-down connection, a time limit, a row cap.

The connection (atlas.store.connect_serving) is opened read_only with external access (files, network), extension install/load and
Python replacement scans off, memory and threads capped, then the configuration is locked so no query
can undo it. DuckDB has no statement timeout, so a timer interrupts the cursor. `fetchmany(limit + 1)`
sets `truncated` without rewriting the user's query.
"""

from __future__ import annotations

import threading
import time

import duckdb

from ..store.atlas import SERVING_CONFIG, connect_serving  # noqa: F401  (re-exported)
from .records import NotAllowed, QueryError, QueryTimeout

ALLOWED = {"SELECT", "EXPLAIN"}  # DESCRIBE, SHOW, SUMMARIZE, FROM-first and VALUES parse as SELECT

def serving_settings(con) -> dict:
    names = list(SERVING_CONFIG) + ["memory_limit", "threads", "lock_configuration"]
    rows = con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN (SELECT unnest(?))", [names]).fetchall()
    return dict(rows)


def check_statement(con, sql: str) -> None:
    if not sql or not sql.strip():
        raise QueryError("empty SQL")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"one statement per request, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in ALLOWED:
        raise NotAllowed(f"only SELECT, WITH, EXPLAIN, DESCRIBE, SHOW and SUMMARIZE are allowed, not {kind}")


def run_sql(con, sql: str, limit: int, timeout_s: float):
    """(column names, rows, truncated, elapsed seconds) of a checked, time-limited query on cursor `con`."""
    check_statement(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    t0 = time.perf_counter()
    timer.start()
    try:
        cur = con.execute(sql)
        rows = cur.fetchmany(limit + 1)
        names = [d[0] for d in cur.description or []]
    except duckdb.InterruptException:
        raise QueryTimeout(timeout_s) from None
    except duckdb.PermissionException as e:
        raise NotAllowed(f"not allowed here: {e}") from None
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    finally:
        timer.cancel()
    return names, rows[:limit], len(rows) > limit, time.perf_counter() - t0
