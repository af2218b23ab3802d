"""The atlas store: DuckDB schema, snapshot-and-publish writing, run records."""

from .atlas import Atlas, AtlasBusy, Writer, default_path
from .runs import record_run
from .schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Atlas", "AtlasBusy", "Writer", "default_path", "record_run"]
