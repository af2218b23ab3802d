"""The atlas store: DuckDB schema, reader snapshots, snapshot-and-publish writing, run records."""

from .atlas import Atlas, AtlasBusy, default_path
from .runs import record_run
from .schema import SCHEMA_VERSION
from .snapshot import Snapshot
from .writer import Writer

__all__ = ["SCHEMA_VERSION", "Atlas", "AtlasBusy", "Snapshot", "Writer", "default_path", "record_run"]
