"""`atlas serve` in a child process: started, waited for, stopped with its workers. The one server starter of
the demo, the bench and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ATLAS = [sys.executable, "-m", "atlas_cli"]
"""The `atlas` command as a child process runs it."""


class Server:
    """`atlas --atlas PATH serve --host H --port P *options` in its own session: Ctrl-C reaches the parent only,
    which stops the server (and its workers) with SIGTERM, a clean shutdown."""

    def __init__(self, atlas_path: str | Path, host: str = "127.0.0.1", port: int = 8000, options=(),
                 log=None, env: dict | None = None):
        self.base = f"http://{host}:{port}"
        out = subprocess.DEVNULL if log is None else log  # without a log, its errors reach the parent's stderr
        self.proc = subprocess.Popen([*ATLAS, "--atlas", str(atlas_path), "serve", "--host", host, "--port", str(port),
                                      *options], stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=None if log is None else subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        """Return once /health answers 200; RuntimeError when the server exits or the time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server stopped at start (exit {self.proc.returncode})")
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer {self.base}/health within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM to its process group (the workers too); SIGKILL if it is still there after 15 s."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
                return
