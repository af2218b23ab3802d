"""The snapshot: one published atlas file as it was when opened, read-only and locked down, with its table files
and everything that depends only on it (docs/design.md, Snapshots). The server, the command line and atlas.open
each hold one; every query takes it. `is_current` says when a job has published another.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from pathlib import Path

import duckdb

from .. import budget
from ..errors import NotFound
from ..index import IndexCache
from . import schema
from .edges import EdgeCatalog

# Every reader (API, user SQL, CLI, tests) opens the file the same locked-down way: read-only, no file
# system or network access but the atlas's own table files, no extension installs, no Python replacement
# scans, no spilling to disk, configuration locked last.
SERVING_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
    "home_directory": ".",  # settings then name no folder of the server's user (secret_directory follows it)
}

FEATURE_COLUMNS = ("dec_norm", "threshold", "density", "max_act", "label")
"""A feature's own columns (features table), as feature_row gives them."""

_opened = itertools.count()


def files_dir(path: str | Path) -> Path:
    """atlas.duckdb -> atlas.files/: the folder of its table files, FAISS indexes, working copies and locks."""
    path = Path(path)
    return path.with_name(path.stem + ".files")


def tables_dir(path: str | Path) -> Path:
    """atlas.duckdb -> atlas.files/tables/ (absolute): where the table files live."""
    return files_dir(Path(path).resolve()) / "tables"


class once:  # noqa: N801  (used as a decorator, like functools.cached_property)
    """A snapshot's answer that depends on nothing else: computed on first use by one thread (others wait for
    it, no state lock held meanwhile), then read as a plain attribute."""

    def __init__(self, build):
        self.build, self.name, self.__doc__ = build, build.__name__, build.__doc__

    def __get__(self, snap, owner=None):
        if snap is None:
            return self
        value = snap.cached(self.name, lambda: self.build(snap))
        snap.__dict__[self.name] = value  # read as an attribute from now on
        return value


class Snapshot:
    """The catalog file now at `path`, open read-only on a DuckDB instance of its own (`con`), with what depends
    only on it: budget-watched cursors, its SAEs and stacks, the catalog of its table files and their edge
    indexes (`edges`), the FAISS indexes (`faiss`), and the facts every request would otherwise ask SQL for,
    each computed once. Caches grow with SAEs and pairs, never with match or feature rows. With check, one of
    this code's schema version (SchemaVersionError otherwise)."""

    def __init__(self, path: str | Path, memory_limit: str = "2GB", threads: int = 2, check: bool = False,
                 through: tuple[Path, tuple[int, int]] | None = None, faiss: IndexCache | None = None):
        """`through`: (a link or a copy of the file to open it by, which the caller removes; the stamp of the file
        it was made from); by default the snapshot makes and removes a link itself. `faiss`: a cache of FAISS
        indexes to share with other snapshots of the atlas (their files never change)."""
        self.path = Path(path)
        if through is not None:
            self.con, self.stamp = _connect(self.path, through[0], memory_limit, threads)[0], through[1]
        else:
            self.con, self.stamp = _open(self.path, memory_limit, threads)
        if check:
            try:
                schema.check_version(self.con, str(path))
            except BaseException:
                self.con.close()
                raise
        self.id = f"{self.stamp[0]}-{self.stamp[1]}"
        self.faiss = faiss if faiss is not None else IndexCache(files_dir(self.path) / "indexes")
        self._guard = threading.Lock()
        self._locks: dict = {}
        self._cache: dict = {}

    # -- SQL ------------------------------------------------------------------------------------------------

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own (DuckDB cursors are per thread), interrupted when the current request's budget
        runs out (atlas/budget.py; outside a request, never)."""
        return budget.watch(self.con.cursor())

    def execute(self, sql: str, params=None) -> duckdb.DuckDBPyConnection:
        """Run one statement on a fresh cursor; the cursor, to fetch from."""
        return self.cursor().execute(sql, params if params is not None else [])

    def rows(self, sql: str, params=None) -> list[dict]:
        """The rows of a query as dicts by column name."""
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def records(self, record: type, sql: str, params=None) -> list:
        """The rows of a query as `record`s (msgspec Structs), each field from the column of its name."""
        return [record(**r) for r in self.rows(sql, params)]

    def cached(self, key, build):
        """build(), computed once for this snapshot (one builder; others wait for it, no other lock held): for what
        depends only on the snapshot, here and in the queries."""
        if key in self._cache:
            return self._cache[key]
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    # -- what it holds --------------------------------------------------------------------------------------

    @once
    def saes(self) -> dict[str, dict]:
        """sae_id -> its saes row (every column)."""
        return {r["sae_id"]: r for r in self.rows("SELECT * FROM saes")}

    def sae(self, sae_id: str) -> dict:
        """An SAE's row; the one place an unknown SAE is refused."""
        row = self.saes.get(sae_id)
        if row is None:
            raise NotFound(f"unknown SAE {sae_id!r}: GET /api/saes (or `atlas saes`) lists the SAEs in this atlas")
        return row

    def feature(self, sae_id: str, feature: int) -> dict:
        """The SAE's row, once `feature` is known to be one of its features (NotFound otherwise)."""
        sae = self.sae(sae_id)
        if not 0 <= feature < sae["d_sae"]:
            raise NotFound(f"SAE {sae_id!r} has features 0..{sae['d_sae'] - 1}; there is no feature {feature}")
        return sae

    @once
    def stacks(self) -> dict[str, list[tuple[str, int]]]:
        """stack -> (sae_id, layer) of its SAEs in layer order."""
        out: dict[str, list[tuple[str, int]]] = {}
        for row in sorted(self.saes.values(), key=lambda r: (r["layer"], r["sae_id"])):
            out.setdefault(row["stack"], []).append((row["sae_id"], row["layer"]))
        return out

    def stack(self, name: str) -> list[tuple[str, int]]:
        """(sae_id, layer) of a stack's SAEs in layer order; the one place an unknown stack is refused."""
        rows = self.stacks.get(name)
        if not rows:
            raise NotFound(f"unknown stack {name!r}: GET /api/stacks lists them")
        return rows

    @once
    def edges(self) -> EdgeCatalog:
        """Its matches by pair-method: the catalog of table files, their edge indexes, Parquet footers."""
        return EdgeCatalog.of(self.cursor())

    @once
    def matched(self) -> dict[tuple[str, str], int]:
        """(stack, method) -> layer pairs of the stack matched with the method (Honest answers: a lineage by a
        method its stack never saw is refused, not answered from nothing)."""
        return {(s, m): n for s, m, n in self.execute(
            "SELECT a.stack, p.method, count(*) FROM pair_stats p JOIN saes a ON p.sae_a = a.sae_id "
            "JOIN saes b ON p.sae_b = b.sae_id WHERE a.stack = b.stack GROUP BY ALL").fetchall()}

    @once
    def checked(self) -> frozenset[str]:
        """Methods whose lineage edges have ablation checks (edge_checks), so lineages of others skip that query."""
        try:
            return frozenset(r[0] for r in self.execute(
                "SELECT DISTINCT method FROM edge_checks WHERE kind <> 'random'").fetchall())
        except duckdb.CatalogException:  # an atlas no job has opened since edge_checks was added
            return frozenset()

    @once
    def labelled(self) -> frozenset[str]:
        """SAEs with any feature label (lineages of the others skip the label query: it scans `features`)."""
        return frozenset(r[0] for r in self.execute(
            "SELECT DISTINCT sae_id FROM features WHERE label IS NOT NULL").fetchall())

    @once
    def examples(self) -> frozenset[str]:
        """SAEs that have example contexts (cards and lineages of the others skip that query)."""
        return frozenset(r[0] for r in self.execute("SELECT DISTINCT sae_id FROM examples").fetchall())

    @once
    def feature_spans(self) -> dict[str, tuple[int, int]]:
        """sae_id -> (first, last) rowid of its features (grows with SAEs)."""
        return {s: (lo, hi) for s, lo, hi in self.execute(
            "SELECT sae_id, min(rowid), max(rowid) FROM features GROUP BY sae_id").fetchall()}

    def feature_row(self, sae_id: str, feature: int) -> tuple:
        """FEATURE_COLUMNS of one feature: one point query, narrowed to the SAE's rowid span (a VARCHAR filter
        alone scans far more of `features`: 3.7 -> 0.75 ms at 1.3M rows)."""
        lo, hi = self.feature_spans.get(sae_id, (0, -1))
        row = self.execute(f"SELECT {', '.join(FEATURE_COLUMNS)} FROM features WHERE rowid BETWEEN ? AND ? "
                           f"AND sae_id = ? AND feature = ?", [lo, hi, sae_id, feature]).fetchone()
        return row if row is not None else (None,) * len(FEATURE_COLUMNS)

    @once
    def index_files(self) -> frozenset[str]:
        """The FAISS index files its SAEs name (a server leases them)."""
        return frozenset(r["index_file"] for r in self.saes.values() if r["index_file"] is not None)

    @once
    def names_files(self) -> bool:
        """Whether it reads anything from the .files/ folder (FAISS indexes, table files)."""
        return bool(self.index_files) or bool(self.execute("SELECT count(*) FROM parts").fetchone()[0])

    # -- life -----------------------------------------------------------------------------------------------

    def is_current(self) -> bool:
        """Whether the file at `path` is still the one this snapshot opened (OSError: no file there now)."""
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns) == self.stamp

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_link(path: str | Path) -> Path | None:
    """A hard link of the catalog file now at `path` under a name used once (atlas.files/open/<unique>/<name>),
    for opening it (the caller removes the link's folder once it is open); None where no link can be made (no
    atlas.files/ folder, a read-only one, a file system without links: no job can replace the file there)."""
    path = Path(path).resolve()
    files = files_dir(path)
    folder = files / "open" / f"{os.getpid()}-{next(_opened)}"
    if not path.exists():
        raise FileNotFoundError(f"no atlas at {path}: run `atlas init` or `atlas ingest` first")
    try:
        if not files.is_dir():  # moved away, or never made: a reader creates nothing there (its owner may come back)
            raise NotADirectoryError(files)
        (files / "open").mkdir(exist_ok=True)
        folder.mkdir(exist_ok=True)
        os.link(path, folder / path.name)
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        if not path.exists():
            raise FileNotFoundError(f"no atlas at {path}: run `atlas init` or `atlas ingest` first") from None
        return None
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return folder / path.name


def _open(path: Path, memory_limit: str, threads: int) -> tuple[duckdb.DuckDBPyConnection, tuple[int, int]]:
    """(connection, (inode, mtime_ns) of the file it opened) for the snapshot now at `path`.

    DuckDB keeps one instance per path and hands it back while any connection to it lives, so reopening a
    path whose file a job has since replaced would return the old, replaced database. Opening through a
    hard link of a name used once (open_link) gives a fresh instance on exactly the file that was there when
    linked, under the usual catalog name; the link goes as soon as it is open.
    """
    link = open_link(path)
    try:
        return _connect(path, link or path, memory_limit, threads)
    finally:
        if link is not None:
            shutil.rmtree(link.parent, ignore_errors=True)


def _connect(path: Path, target: Path, memory_limit: str, threads: int):
    """(connection, stamp) of the catalog at `path`, opened by the name `target` (itself or a link of it)."""
    path = Path(path).resolve()
    # allowed_directories can only be set on a running database, before external access is turned off
    config = {k: v for k, v in SERVING_CONFIG.items() if k != "enable_external_access"}
    config.update(memory_limit=memory_limit, threads=threads, temp_directory="")
    tables = tables_dir(path)
    files = tables.parent
    st = os.stat(target)
    con = duckdb.connect(str(target), read_only=True, config=config)
    try:
        con.execute(f"SET allowed_directories = [{schema.literal(str(tables) + os.sep)}]")
        con.execute("SET enable_external_access = false")
        named = schema.files_root(con)
        has_parts = named is not None and schema.version_of(con) == schema.SCHEMA_VERSION and \
            con.execute("SELECT count(*) FROM parts").fetchone()[0]
        if has_parts and named != str(tables):
            raise FileNotFoundError(f"{path}: its views name table files under {named}, but the atlas is now "
                                    f"here: run `atlas migrate` once to point them at {tables} (an atlas is the "
                                    f"DuckDB file and its {tables.parent.name}/ folder: copy or move them together)")
        if has_parts and not tables.is_dir():
            raise FileNotFoundError(f"{path}: its table files are not there ({files.name}/tables/ is missing); if "
                                    f"its {files.name}/ folder was moved, move it back beside {path.name} (an atlas "
                                    f"is the DuckDB file and its {files.name}/ folder: copy or move them together)")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con, (st.st_ino, st.st_mtime_ns)
