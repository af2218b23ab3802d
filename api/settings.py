"""Server settings as data: one table of (name, default, help) read by the CLI, the docs and a test."""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Settings:
    sql_time_limit_s: float = field(default=5.0, metadata={"help": "User SQL is interrupted after this many seconds."})
    sql_max_rows: int = field(default=1000, metadata={"help": "Most rows /api/sql returns; a request may lower it."})
    page_size: int = field(default=100, metadata={"help": "Items per page of list endpoints (next token for more)."})
    memory_limit: str = field(default="2GB", metadata={"help": "DuckDB memory limit of the serving connection."})
    threads: int = field(default=2, metadata={"help": "DuckDB threads per server worker (--threads)."})
    cors_origins: tuple[str, ...] = field(default=(), metadata={
        "help": "Origins allowed to call the API from a browser (CORS off when empty; '*' for any)."})


def settings_table() -> list[tuple[str, object, str]]:
    return [(f.name, f.default, f.metadata["help"]) for f in fields(Settings)]
