"""Server settings as data: one table of fields (default, help) that `atlas serve` makes its options from (under
`flag` where the option is not --name-with-dashes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    sql_time_limit_s: float = field(default=5.0, metadata={
        "help": "User SQL is interrupted after this many seconds.", "flag": "--sql-time-limit"})
    sql_max_rows: int = field(default=1000, metadata={"help": "Most rows /api/sql returns; a request may lower it."})
    sql_max_bytes: int = field(default=16 * 2**20, metadata={
        "help": "Largest /api/sql response body in bytes; rows past it are left out and `truncated` is true."})
    sql_parse_time_limit_s: float = field(default=1.0, metadata={
        "help": "CPU seconds a SQL worker may spend checking one statement (DuckDB's parser) before it is stopped "
                "(408); the statement's whole time counts against --sql-time-limit.",
        "flag": "--sql-parse-time-limit"})
    max_bytes_in_flight: int = field(default=48 * 2**20, metadata={
        "help": "Response bytes that all requests together may hold while their clients read them; past it an "
                "answer is a 503 with Retry-After (a client that reads nothing for --query-time-limit is dropped)."})
    sql_workers: int = field(default=2, metadata={
        "help": "Processes that run user SQL (each under memory_limit; killed and restarted past a limit)."})
    query_time_limit_s: float = field(default=10.0, metadata={
        "help": "Any other request is stopped after this many seconds (408), or when its client disconnects.",
        "flag": "--query-time-limit"})
    page_size: int = field(default=100, metadata={"help": "Items per page of list endpoints (next token for more)."})
    memory_limit: str = field(default="2GB", metadata={
        "help": "DuckDB memory limit of the serving connection; the SQL processes share it (each gets memory_limit / sql_workers)."})
    threads: int = field(default=2, metadata={"help": "DuckDB threads per server worker."})
    cors_origins: tuple[str, ...] = field(default=(), metadata={
        "help": "Origins allowed to call the API from a browser (repeatable; CORS off when none; '*' for any).",
        "flag": "--cors"})

