"""`atlas serve` on a free loopback port for the bench and the tests, through the one server starter
(`atlas_ingest.server_process.Server`): yielded once /health answers, stopped with its workers on the way out."""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from atlas_ingest.server_process import Server

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(atlas_path: str | Path, *options: str, timeout: float = 120) -> Iterator[Server]:
    """This tree's `atlas serve` on a free port; a server that does not come up raises with the end of its log."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as log:
        server = Server(atlas_path, port=free_port(), options=options, log=log, env=env)
        try:
            try:
                server.wait_ready(timeout)
            except RuntimeError as e:
                log.seek(0)
                raise RuntimeError(f"atlas serve did not start ({e}): {log.read().decode(errors='replace')[-2000:]}") from None
            yield server
        finally:
            server.stop()
