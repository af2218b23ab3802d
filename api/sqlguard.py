"""Read-only SQL for untrusted users: statement allow-list, a locked-down connection, a time limit, row and byte caps.

Statements are classified by DuckDB's own parser (statement types, not keywords): one SELECT (DESCRIBE, SHOW,
SUMMARIZE, FROM-first and VALUES parse as SELECT), or EXPLAIN [ANALYZE] of one SELECT. EXPLAIN ANALYZE runs
what it wraps, and the parser does not say what that is, so the text after EXPLAIN and its options is parsed
again on its own. The SQL worker also cannot write any file (api/sandbox.py): a statement that slipped past
this check still could not change the atlas.

The connection (atlas.store.snapshot) is opened read_only with external access (files, network), extension
install/load and Python replacement scans off, memory and threads capped, then the configuration is locked so
no query can undo it. DuckDB has no statement timeout, so a timer interrupts the cursor; DuckDB neither checks
interrupts inside every function nor counts every allocation, so the server also runs this in a worker
process it kills past the limits (api/sqlpool.py). Rows are fetched in chunks up to the row and byte caps,
which set `truncated` without rewriting the user's query.
"""

from __future__ import annotations

import threading
import time

import duckdb
import msgspec

from atlas.errors import NotAllowed, OverBudget, QueryError, QueryTimeout

ALLOWED = "only SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE and EXPLAIN [ANALYZE] of a SELECT are allowed"
MAX_SQL_CHARS = 100_000
"""Longest statement accepted: DuckDB's parser is superlinear in some shapes (a chain of CTEs), so the
length is capped before it parses, and the server gives the parse a time limit of its own (api/sqlpool.py)."""


def check_statement(con, sql: str) -> None:
    """Refuse (QueryError, NotAllowed) anything but one read-only statement."""
    if not sql or not sql.strip():
        raise QueryError("empty SQL")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError(f"the statement has {len(sql):,} characters; at most {MAX_SQL_CHARS:,} are accepted")
    kind = _kind(con, sql)
    if kind == "EXPLAIN":
        inner = _explained(sql)
        if inner is None:
            raise NotAllowed(f"{ALLOWED}: cannot tell what this EXPLAIN wraps")
        kind = _kind(con, inner)
        if kind != "SELECT":
            raise NotAllowed(f"{ALLOWED}, not EXPLAIN of {kind} (EXPLAIN ANALYZE runs what it wraps)")
    elif kind != "SELECT":
        raise NotAllowed(f"{ALLOWED}, not {kind}")


def _kind(con, sql: str) -> str:
    """The statement type of the one statement in `sql`, by DuckDB's parser."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(f"SQL does not parse: {e}") from None
    if len(statements) != 1:
        raise QueryError(f"one statement per request, got {len(statements)}")
    return statements[0].type.name


def _explained(sql: str) -> str | None:
    """The statement an EXPLAIN wraps: the text after EXPLAIN, its ANALYZE / VERBOSE keywords and its (option
    list), found with DuckDB's tokenizer (comments skipped); None where the tokens are not that shape."""
    tokens = duckdb.tokenize(sql)
    words = [(off, sql[off:end].strip().upper(), kind)
             for (off, kind), end in zip(tokens, [t[0] for t in tokens[1:]] + [len(sql)])
             if kind != duckdb.token_type.comment]
    if not words or words[0][1] != "EXPLAIN":
        return None
    i, depth = 1, 0
    while i < len(words):
        off, word, _ = words[i]
        if depth == 0 and word in ("ANALYZE", "ANALYSE", "VERBOSE"):
            i += 1
        elif depth > 0 or word.startswith("(") and (i == 1 or words[i - 1][1] in ("ANALYZE", "ANALYSE", "VERBOSE")):
            depth += word.count("(") - word.count(")")
            i += 1
        else:
            return sql[off:]
    return None


def run_sql(con, sql: str, limit: int, timeout_s: float, max_bytes: int | None = None, checked: bool = False):
    """(column names, rows, truncated, elapsed seconds) of a checked, time-limited query on cursor `con`
    (`checked`: the caller has already passed `sql` through check_statement).

    Rows stop at `limit` or where their JSON size would pass `max_bytes`; `truncated` says either happened.
    A file the query cannot read is a QueryError whose __cause__ is DuckDB's IOException.
    """
    if not checked:
        check_statement(con, sql)
    timer = threading.Timer(timeout_s, con.interrupt)
    t0 = time.perf_counter()
    timer.start()
    rows: list = []
    size, truncated = 0, False
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description or []]
        while not truncated:
            chunk = cur.fetchmany(min(64, limit + 1 - len(rows)))
            if not chunk:
                break
            for row in chunk:
                size += len(msgspec.json.encode(row, enc_hook=str)) if max_bytes is not None else 0
                if len(rows) == limit or max_bytes is not None and size > max_bytes:
                    truncated = True
                    break
                rows.append(row)
    except duckdb.InterruptException:
        raise QueryTimeout(timeout_s) from None
    except duckdb.OutOfMemoryException:
        raise OverBudget("the query needs more memory than the server's memory_limit; ask for less (filters, "
                         "a LIMIT)", "memory_limit") from None
    except duckdb.PermissionException as e:
        raise NotAllowed(f"not allowed here: {e}") from None
    except duckdb.IOException as e:
        raise QueryError(f"SQL error: {e}") from e
    except duckdb.Error as e:
        raise QueryError(f"SQL error: {e}") from None
    finally:
        timer.cancel()
    return names, rows, truncated, time.perf_counter() - t0
