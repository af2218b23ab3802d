"""`atlas serve` in a subprocess on a free loopback port, for the bench and the tests: started, waited for
(/health answers 200), stopped with its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATLAS = [sys.executable, "-m", "cli"]
"""The `atlas` command as the bench and the tests run it in a subprocess."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base: str
    proc: subprocess.Popen

    def stop(self) -> None:
        """SIGTERM to its process group (the workers too); SIGKILL if it is still there after 15 s."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                return


@contextlib.contextmanager
def serving(atlas_path: str | Path, *options: str, timeout: float = 120) -> Iterator[Server]:
    """`atlas --atlas PATH serve --port P *options` (this tree's code) in its own process group, yielded once it
    answers /health; stopped on the way out. A server that does not come up raises with the end of its log."""
    import httpx

    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([*ATLAS, "--atlas", str(atlas_path), "serve", "--port", str(port), *options], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(f"http://127.0.0.1:{port}", proc)
        try:
            deadline = time.monotonic() + timeout
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{server.base}/health", timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"atlas serve did not start: {log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.1)
            yield server
        finally:
            server.stop()
