"""Reader snapshots: the published catalog file as it was when opened, read-only and locked down, with the
table files its views name (docs/design.md, Snapshots). Readers keep the snapshot they opened; `is_current`
says when a job has published another.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import duckdb

from . import schema

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

_opened = itertools.count()


def tables_dir(path: str | Path) -> Path:
    """atlas.duckdb -> atlas.files/tables/ (absolute): where the table files live."""
    path = Path(path).resolve()
    return path.with_name(path.stem + ".files") / "tables"


class Snapshot:
    """The catalog file now at `path`, open read-only on a DuckDB instance of its own (`con`); with check, one
    of this code's schema version (SchemaVersionError otherwise)."""

    def __init__(self, path: str | Path, memory_limit: str = "2GB", threads: int = 2, check: bool = False,
                 through: tuple[Path, tuple[int, int]] | None = None):
        """`through`: (a link or a copy of the file to open it by, which the caller removes; the stamp of the file
        it was made from); by default the snapshot makes and removes a link itself."""
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

    def is_current(self) -> bool:
        """Whether the file at `path` is still the one this snapshot opened (OSError: no file there now)."""
        st = os.stat(self.path)
        return (st.st_ino, st.st_mtime_ns) == self.stamp

    def close(self) -> None:
        self.con.close()


def open_link(path: str | Path) -> Path | None:
    """A hard link of the catalog file now at `path` under a name used once (atlas.files/open/<unique>/<name>),
    for opening it (the caller removes the link's folder once it is open); None where no link can be made (no
    atlas.files/ folder, a read-only one, a file system without links: no job can replace the file there)."""
    path = Path(path).resolve()
    files = tables_dir(path).parent
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
