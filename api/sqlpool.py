"""User SQL in worker processes: a hard stop and a real memory cap that DuckDB alone does not give.

DuckDB checks interrupts between vectors, not inside every function, and does not count every allocation
against memory_limit (a list_sort of 10^8 numbers runs on past its interrupt at several GB). So each query
runs in a worker process (forked from a preloaded forkserver, so a fresh one costs milliseconds) that the
server watches: past the time limit, past the memory cap (resident size), or when the client disconnects,
the worker is killed and replaced, and the request gets a 408 / 422 / nothing. Workers open the newest
published snapshot themselves.

Each worker is sandboxed (api/sandbox.py): it cannot write any file, and its address space is capped, so a
single huge allocation (a 2 GB string from format/lpad) fails inside DuckDB instead of outrunning the watcher.
User SQL has its own concurrency gate (`submit`): at most `size` statements run and QUEUE_PER_WORKER × size
wait; past that the request is refused with 503 and Retry-After, so a SQL flood never takes the threads or
the CPU that other routes need (workers also run at a lower CPU priority).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import duckdb

from atlas.errors import Cancelled, NotAllowed, NotFound, OverBudget, QueryError, QueryTimeout
from atlas.store.snapshot import tables_dir

from .paths import RETRY_S
from .sandbox import cpu_seconds, statm

GRACE_S = 1.0  # the worker's own interrupt gets this long before the kill
QUEUE_PER_WORKER = 4  # statements that may wait per worker before new ones are refused (503)
HEADROOM = 256 * 2**20  # address space / resident size a worker may use past memory_limit (Python, buffers)
NICE = 5  # workers yield the CPU to the server's own routes


class Unavailable(QueryError):
    """Not now: the SQL queue is full, or the atlas is not where it was; try again after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ParseTimeout(QueryTimeout):
    """The statement took longer to parse than the parse time limit (DuckDB's parser is superlinear in some
    shapes, e.g. a long chain of CTEs): the worker parsing it was stopped."""

    def __init__(self, seconds: float):
        OverBudget.__init__(self, f"the statement took more than {seconds:g} s to parse and was stopped; shorten it "
                                  f"(a long chain of CTEs?)", f"sql_parse_time_limit={seconds:g}s")
        self.seconds = seconds


_KINDS = {c.__name__: c for c in (QueryError, NotAllowed, NotFound, OverBudget, QueryTimeout, Unavailable)}


def _serve(conn, atlas_path: str, memory_limit: str, threads: int) -> None:
    """Worker loop: (sql, limit, timeout_s, max_bytes, fmt) in; ('checked',) once the statement passed the
    check, then ('ok', truncated) and the body's bytes, or ('error', kind, message, bound) out. ('stale',) and
    exit when a job has published another snapshot: a worker cannot reopen the atlas (its reads are confined),
    a fresh one does."""
    import duckdb

    from atlas.store.snapshot import Snapshot

    from .paths import Relative
    from .paths import missing as missing_message
    from .sandbox import cap_address_space, confine_reads, deny_writes, limit_malloc_arenas
    from .sqlguard import check_statement, run_sql
    from .sqlanswer import encode, warm

    snap = opened = None
    relative = Relative(atlas_path)
    try:
        limit_malloc_arenas()
        os.nice(NICE)
        if len(os.listdir("/proc/self/task")) > 1:  # the sandbox holds for threads started after it only
            raise RuntimeError("the SQL worker has threads before its sandbox")
        # The catalog is opened by a name the server removes once the worker is ready (a hard link, or a private
        # copy), so the database file DuckDB lets a connection read whatever allowed_directories says no longer
        # exists, and the kernel lets the worker read only the table files, that name and its libraries.
        target, stamp, opened = _private_catalog(atlas_path)
        tables = tables_dir(atlas_path)
        proc = os.open("/proc/self/statm", os.O_RDONLY)
        deny_writes()
        confine_reads([tables, opened, *_libraries(atlas_path)])
        snap = Snapshot(atlas_path, memory_limit, threads, through=(target, stamp))
        catalog = {str(tables / f) for r in snap.con.execute("SELECT file, reverse_file FROM parts").fetchall()
                   for f in r if f}
        warm(snap.con)  # DuckDB's threads are up and lazy imports done: VM is near its base
        cap_address_space(statm(fd=proc) + parse_bytes(memory_limit) + HEADROOM)
        conn.send(("ready", statm(fd=proc, field=1), snap.stamp, str(opened)))
    except Exception as e:  # noqa: BLE001  (the server reports it on the request that waited for this worker)
        try:
            conn.send(("failed", type(e).__name__, relative.text(str(e)), str(opened) if opened else None))
        except OSError:
            pass
        return
    while True:
        try:
            sql, limit, timeout_s, max_bytes, fmt = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if not _current(snap):
                conn.send(("stale",))
                return
            cur = snap.con.cursor()
            check_statement(cur, sql)
            conn.send(("checked",))
            names, rows, truncated, elapsed = run_sql(cur, sql, limit, timeout_s, max_bytes, checked=True)
            body = encode(fmt, names, relative.rows(rows), truncated, limit, elapsed)
            conn.send(("ok", truncated))
            conn.send_bytes(body)  # one buffer on each side: the server holds the answer's bytes once
        except QueryError as e:
            missing = _missing(e, catalog)
            if missing is not None:
                conn.send(("error", "Unavailable", missing_message(relative.text(missing)), RETRY_S))
            else:
                conn.send(("error", type(e).__name__, relative.text(str(e)), getattr(e, "bound", None)))
        except MemoryError:
            conn.send(("error", "OverBudget", f"the query needs more memory than this SQL worker's memory_limit "
                       f"({memory_limit}); ask for less (filters, a LIMIT)", "memory_limit"))
        except Exception as e:  # noqa: BLE001  (reported as one line; the worker stays up)
            conn.send(("error", "QueryError", relative.text(f"SQL error: {type(e).__name__}: {e}"), None))


def _private_catalog(atlas_path: str) -> tuple[Path, tuple[int, int], Path]:
    """(file to open the catalog by, stamp of the catalog file it stands for, folder the server removes once the
    worker is ready): a hard link in atlas.files/open/, or where none can be made (a read-only folder) a copy."""
    from atlas.store.snapshot import open_link

    link = open_link(atlas_path)
    if link is not None:
        st = os.stat(link)
        return link, (st.st_ino, st.st_mtime_ns), link.parent
    path = Path(atlas_path).resolve()
    folder = Path(tempfile.mkdtemp(prefix="atlas-sql-"))
    with open(path, "rb") as src, open(folder / path.name, "wb") as dst:
        st = os.fstat(src.fileno())  # the file copied, whatever a job renames over the name meanwhile
        shutil.copyfileobj(src, dst, 2**20)
    return folder / path.name, (st.st_ino, st.st_mtime_ns), folder


def _current(snap) -> bool:
    try:
        return snap.is_current()
    except OSError:  # the file is not there now: a fresh worker says why
        return False


def _missing(e: QueryError, catalog: set[str]) -> str | None:
    """The table file named by the catalog that a query could not read (None: any other error)."""
    if not isinstance(e.__cause__, duckdb.IOException):
        return None
    return next((f for f in catalog if f in str(e.__cause__) and not os.path.exists(f)), None)


def _libraries(atlas_path: str) -> list[str]:
    """What the worker may still read: the folders of Python, its packages and the time zone database, less any
    that holds the atlas (then only the table files and what was loaded before are readable), and its cgroup."""
    import sys
    import sysconfig

    atlas_dir = os.path.realpath(os.path.dirname(os.path.abspath(atlas_path)))
    folders = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                            *sysconfig.get_paths().values(), "/usr/share/zoneinfo") if p}
    # DuckDB reads the process's cgroup and its limits when it starts (CPU and memory it may use)
    system = [f"/proc/{os.getpid()}/cgroup", "/sys/fs/cgroup"]
    return [*sorted(f for f in folders if not (atlas_dir + os.sep).startswith(f.rstrip(os.sep) + os.sep)), *system]


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
    stamp: tuple[int, int]  # (inode, mtime_ns) of the snapshot it opened

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)
        self.conn.close()


class SQLPool:
    """Up to `size` worker processes, started on first use; one query at a time each.

    The workers share `memory_limit`: each runs under memory_limit / size (DuckDB's limit, its address space
    and its resident size), so all user SQL together stays near memory_limit whatever the statements do."""

    def __init__(self, atlas_path: str, size: int, memory_limit: str, threads: int):
        self.atlas_path, self.size, self.threads = atlas_path, size, threads
        self.limit_bytes = parse_bytes(memory_limit) // max(size, 1)
        self.memory_limit = f"{self.limit_bytes // 2**20}MiB"
        self.ctx = mp.get_context("forkserver")
        # pandas: pyarrow imports it on first use; loaded once here, not in every worker
        self.ctx.set_forkserver_preload(["atlas_api.sqlpool", "atlas_api.sandbox", "atlas_api.sqlanswer", "atlas_api.sqlguard",
                                         "atlas.store.snapshot", "pandas"])
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.lock = threading.Lock()
        self.count = 0
        self.closed = False
        self.gate = anyio.CapacityLimiter(size)  # the SQL routes' own threads: never the other routes' pool

    async def submit(self, fn, *args, retry_after: float = 1.0):
        """Run fn(*args) (a blocking call that uses a worker) in a thread of the SQL gate, or refuse (Unavailable)
        when QUEUE_PER_WORKER × size statements already wait."""
        if self.gate.statistics().tasks_waiting >= QUEUE_PER_WORKER * self.size:
            raise Unavailable(f"the server is running {self.size} SQL statements and {QUEUE_PER_WORKER * self.size} more "
                       f"wait; try again in a few seconds", max(1, math.ceil(retry_after)))
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.gate)

    def _start(self) -> _Worker:
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(target=_serve, args=(theirs, self.atlas_path, self.memory_limit, self.threads),
                             daemon=True, name="atlas-sql")
        p.start()
        theirs.close()
        try:
            reply = mine.recv() if mine.poll(60) else ("failed", "TimeoutError", "it did not answer within 60 s")
        except (EOFError, OSError):
            reply = ("failed", "EOFError", "it exited at start")
        # the name the worker opened the catalog by (it cannot remove files): gone, it opens nothing
        left = [reply[-1]] if reply[0] in ("ready", "failed") and reply[-1] else []
        for folder in [*left, *(tables_dir(self.atlas_path).parent / "open").glob(f"{p.pid}-*")]:
            shutil.rmtree(folder, ignore_errors=True)
        if reply[0] != "ready":
            p.kill()
            p.join(5)
            mine.close()
            _, kind, message, *_ = reply
            if kind == "FileNotFoundError":  # the atlas or its folder is not where the server found it
                raise Unavailable(f"the atlas cannot be served now: {message} (this server tries again on every "
                                  f"request)", RETRY_S)
            raise RuntimeError(f"the SQL worker did not start: {kind}: {message}")
        # DuckDB's own limit and the address-space cap stop most big queries first; the kill is the last guard.
        return _Worker(p, mine, reply[1] + self.limit_bytes + HEADROOM, reply[2])

    def _grow(self) -> _Worker | None:
        """A new worker while fewer than `size` run, else None; a start that fails gives its place back."""
        with self.lock:
            grow = self.count < self.size
            self.count += grow
        if not grow:
            return None
        try:
            return self._start()
        except BaseException:
            with self.lock:
                self.count -= 1
            raise

    def _acquire(self, wait_s: float, budget=None) -> _Worker:
        """An idle live worker, a new one while fewer than `size` run, or the next one freed (within wait_s).

        A worker that died (killed from outside, say) is dropped and its place taken by a new one at once."""
        end = time.monotonic() + wait_s
        while True:
            try:
                w = self.idle.get_nowait()
                if w.process.is_alive() and w.stamp == self._published():
                    return w
                self._drop(w, replace=False)  # dead, or open on a snapshot a job has since replaced
                continue
            except queue.Empty:
                pass
            w = self._grow()
            if w is not None:
                return w
            if time.monotonic() > end:
                raise OverBudget(f"all {self.size} SQL workers stayed busy for {wait_s:g} s; try again",
                                 f"sql_workers={self.size}")
            if budget is not None:
                budget.check("SQL (waiting for a free SQL worker)")
            try:
                w = self.idle.get(timeout=0.05)
            except queue.Empty:
                continue
            self.idle.put(w)  # checked for life at the top of the loop

    def _published(self) -> tuple[int, int] | None:
        """(inode, mtime_ns) of the atlas file there now (None: not there)."""
        try:
            st = os.stat(self.atlas_path)
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _drop(self, w: _Worker, replace: bool = True) -> None:
        w.kill()
        with self.lock:
            self.count -= 1
        if replace and not self.closed:
            self.warm()  # the next statement finds a worker ready

    def run(self, sql: str, limit: int, timeout_s: float, max_bytes: int, budget=None, fmt: str = "json",
            parse_s: float | None = None) -> tuple[bytes, bool]:
        """(body in format `fmt`, truncated) of one query, or the query error that stopped it. The statement
        check may use `parse_s` seconds of the worker's CPU (CPU, not wall time: on a loaded machine a worker at
        nice 5 waits for the CPU), and it and the query together `timeout_s` of wall time."""
        for _ in range(3):  # a worker open on a replaced snapshot says so before it runs anything
            reply = self._run_once(sql, limit, timeout_s, max_bytes, budget, fmt,
                                   timeout_s if parse_s is None else parse_s)
            if reply[0] != "stale":
                break
        if reply[0] == "ok":
            return reply[2], reply[1]
        if reply[0] == "stale":
            raise Unavailable("the atlas changed three times while this query waited; try again", 1)
        _, kind, message, bound = reply
        cls = _KINDS.get(kind, QueryError)
        if cls is QueryTimeout:
            raise QueryTimeout(timeout_s)
        if cls is Unavailable:
            raise Unavailable(message, bound)
        raise cls(message, bound) if issubclass(cls, OverBudget) else cls(message)

    def _run_once(self, sql, limit, timeout_s, max_bytes, budget, fmt, parse_s) -> tuple:
        w = self._acquire(timeout_s + 30, budget)
        healthy = False
        try:
            cpu0 = cpu_seconds(w.process.pid)
            w.conn.send((sql, limit, timeout_s, max_bytes, fmt))
            deadline, checked = time.monotonic() + timeout_s + GRACE_S, False
            while True:
                while not w.conn.poll(0.02):
                    if budget is not None and budget.cancelled:
                        raise Cancelled("the client went away; the query was stopped")
                    if time.monotonic() > deadline:
                        raise QueryTimeout(timeout_s)
                    if not checked and cpu_seconds(w.process.pid) - cpu0 > parse_s:
                        raise ParseTimeout(parse_s)
                    if statm(w.process.pid, 1) > w.cap:
                        raise OverBudget(f"the query used more than a SQL worker's memory_limit ({self.memory_limit}) "
                                         f"and was stopped; ask for less (filters, a LIMIT)", "memory_limit")
                try:
                    reply = w.conn.recv()
                except (EOFError, OSError):
                    raise OverBudget("the SQL worker died running this query (out of memory?); ask for less",
                                     "memory_limit") from None
                if reply[0] == "ok":
                    reply = (*reply, w.conn.recv_bytes())
                if reply[0] != "checked":
                    break
                checked = True
            # after running out of memory a worker's heap is fragmented: a fresh one (milliseconds) serves the next
            healthy = reply[0] != "stale" and not (reply[0] == "error" and reply[-1] == "memory_limit")
        finally:
            if healthy and not self.closed:
                self.idle.put(w)
            else:
                self._drop(w)
        return reply

    def warm(self) -> None:
        """Start one worker in the background while fewer than `size` run (the forkserver's first start imports
        DuckDB: about a second; later ones take milliseconds)."""
        def start():
            try:
                w = None if self.closed else self._grow()
            except Exception:  # noqa: BLE001  (the next query reports it)
                return
            if w is not None and self.closed:
                self._drop(w, replace=False)
            elif w is not None:
                self.idle.put(w)
        threading.Thread(target=start, daemon=True, name="atlas-sql-warm").start()

    def close(self) -> None:
        self.closed = True
        while True:
            try:
                self._drop(self.idle.get_nowait(), replace=False)
            except queue.Empty:
                return
