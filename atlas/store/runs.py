"""The runs table: every job records its parameters, package versions, times and status."""

from __future__ import annotations

import contextlib
import json
import uuid
from datetime import datetime, timezone
from importlib import metadata


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("feature-atlas", "duckdb", "torch", "faiss-cpu", "faiss-gpu", "numpy", "scipy", "sae-lens"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


@contextlib.contextmanager
def record_run(writer, kind: str, params: dict):
    """Insert a 'running' row, yield its run_id, mark it 'ok' when the body finishes."""
    run_id = f"{kind}-{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    writer.insert_rows("runs", [{"run_id": run_id, "kind": kind, "params": json.dumps(params, default=str),
                                 "versions": json.dumps(versions()), "started_at": _now(), "status": "running"}])
    yield run_id
    writer.finish_run(run_id, _now())
