"""User SQL in worker processes: a hard stop and a real memory cap that DuckDB alone does not give.

DuckDB checks interrupts between vectors, not inside every function, and does not count every allocation
against memory_limit (a list_sort of 10^8 numbers runs on past its interrupt at several GB). So each query
runs in a worker process (forked from a preloaded forkserver, so a fresh one costs milliseconds) that the
server watches: past the time limit, past the memory cap (resident size), or when the client disconnects,
the worker is killed and replaced, and the request gets a 408 / 422 / nothing. Workers open the newest
published snapshot themselves.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import threading
import time
from dataclasses import dataclass

from atlas.queries.records import Cancelled, NotAllowed, NotFound, OverBudget, QueryError, QueryTimeout

GRACE_S = 1.0  # the worker's own interrupt gets this long before the kill
_KINDS = {c.__name__: c for c in (QueryError, NotAllowed, NotFound, OverBudget, QueryTimeout)}


def _serve(conn, atlas_path: str, memory_limit: str, threads: int) -> None:
    """Worker loop: (sql, limit, timeout_s, max_bytes) in, ('ok', result) or ('error', kind, message, bound) out."""
    from atlas.queries.sqlguard import run_sql
    from atlas.store.atlas import open_snapshot

    con, stamp = None, None
    try:
        conn.send(("ready", _rss(os.getpid())))
    except OSError:  # the server closed before this worker was up
        return
    while True:
        try:
            sql, limit, timeout_s, max_bytes = conn.recv()
        except (EOFError, OSError):
            return
        try:
            st = os.stat(atlas_path)
            if con is None or stamp != (st.st_ino, st.st_mtime_ns):
                con, stamp = open_snapshot(atlas_path, memory_limit, threads)
            conn.send(("ok", run_sql(con.cursor(), sql, limit, timeout_s, max_bytes)))
        except QueryError as e:
            conn.send(("error", type(e).__name__, str(e), getattr(e, "bound", None)))
        except Exception as e:  # noqa: BLE001  (reported as one line; the worker stays up)
            conn.send(("error", "QueryError", f"SQL error: {type(e).__name__}: {e}", None))


def _rss(pid: int) -> int:
    """Resident bytes of a process (0 where /proc is not there)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", text, re.I)
    if not m:
        raise ValueError(f"memory size {text!r}: write it like 2GB or 512MB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


@dataclass
class _Worker:
    process: mp.Process
    conn: object
    cap: int

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class SQLPool:
    """Up to `size` worker processes, started on first use; one query at a time each."""

    def __init__(self, atlas_path: str, size: int, memory_limit: str, threads: int):
        self.atlas_path, self.size, self.memory_limit, self.threads = atlas_path, size, memory_limit, threads
        self.limit_bytes = parse_bytes(memory_limit)
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["api.sqlpool", "atlas.queries.sqlguard", "atlas.store.atlas"])
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.lock = threading.Lock()
        self.count = 0
        self.closed = False

    def _start(self) -> _Worker:
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(target=_serve, args=(theirs, self.atlas_path, self.memory_limit, self.threads),
                             daemon=True, name="atlas-sql")
        p.start()
        theirs.close()
        if not mine.poll(60):
            p.kill()
            raise RuntimeError("the SQL worker did not start")
        _, base = mine.recv()
        # DuckDB's own limit stops most big queries first; the kill is for what it does not count.
        return _Worker(p, mine, base + self.limit_bytes + 256 * 2**20)

    def _acquire(self, wait_s: float, budget=None) -> _Worker:
        """An idle worker, a new one while fewer than `size` run, or the next one freed (within wait_s)."""
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            grow = self.count < self.size
            self.count += grow
        if grow:
            try:
                return self._start()
            except BaseException:
                with self.lock:
                    self.count -= 1
                raise
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if budget is not None:
                budget.check("SQL (waiting for a free SQL worker)")
            try:
                return self.idle.get(timeout=0.1)
            except queue.Empty:
                pass
        raise OverBudget(f"all {self.size} SQL workers stayed busy for {wait_s:g} s; try again",
                         f"sql_workers={self.size}")

    def _drop(self, w: _Worker) -> None:
        w.kill()
        with self.lock:
            self.count -= 1

    def run(self, sql: str, limit: int, timeout_s: float, max_bytes: int, budget=None):
        """(names, rows, truncated, elapsed) of one query, or the query error that stopped it."""
        w = self._acquire(timeout_s + 30, budget)
        healthy = False
        try:
            w.conn.send((sql, limit, timeout_s, max_bytes))
            deadline = time.monotonic() + timeout_s + GRACE_S
            while not w.conn.poll(0.02):
                if budget is not None and budget.cancelled:
                    raise Cancelled("the client went away; the query was stopped")
                if time.monotonic() > deadline:
                    raise QueryTimeout(timeout_s)
                if _rss(w.process.pid) > w.cap:
                    raise OverBudget(f"the query used more than the server's memory_limit ({self.memory_limit}) "
                                     f"and was stopped; ask for less (filters, a LIMIT)", "memory_limit")
            try:
                reply = w.conn.recv()
            except (EOFError, OSError):
                raise OverBudget("the SQL worker died running this query (out of memory?); ask for less",
                                 "memory_limit") from None
            healthy = True
        finally:
            if healthy and not self.closed:
                self.idle.put(w)
            else:
                self._drop(w)
        if reply[0] == "ok":
            return reply[1]
        _, kind, message, bound = reply
        cls = _KINDS.get(kind, QueryError)
        if cls is QueryTimeout:
            raise QueryTimeout(timeout_s)
        raise cls(message, bound) if issubclass(cls, OverBudget) else cls(message)

    def warm(self) -> None:
        """Start one worker in the background (the forkserver's first start imports DuckDB: about a second)."""
        def start():
            try:
                w = self._acquire(60)
            except Exception:  # noqa: BLE001  (the first query will report it)
                return
            if self.closed:
                self._drop(w)
            else:
                self.idle.put(w)
        threading.Thread(target=start, daemon=True, name="atlas-sql-warm").start()

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                self._drop(self.idle.get_nowait())
            except queue.Empty:
                return
