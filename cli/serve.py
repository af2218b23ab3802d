"""atlas serve and atlas demo: the HTTP server, alone or beside the demo build."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from atlas_api.settings import Settings

from .group import main
from .options import options_from


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes (each reads the atlas).")
@options_from(Settings)  # one option per server setting (api/settings.py)
@click.pass_obj
def serve(atlas, host, port, workers, **settings):
    """Serve the atlas over HTTP: JSON API under /api, OpenAPI docs at /schema.

    Jobs may run meanwhile: the server keeps its snapshot and switches to a new one when a job publishes.
    """
    import json
    import os

    import uvicorn

    if not atlas.exists():
        raise FileNotFoundError(f"no atlas at {atlas.path}: run `make demo` or `atlas synth` first")
    os.environ["ATLAS_PATH"] = str(atlas.path.resolve())
    os.environ["ATLAS_SETTINGS"] = json.dumps(settings)
    click.echo(f"serving {atlas.path} at http://{host}:{port}/ (API under /api, docs at /schema)")
    # GET /api/sql takes 100,000 characters, up to 1.2 MB percent-encoded: past h11's 16 KiB default a request
    # line would be uvicorn's own text/plain 400, outside the error envelope
    line = {"h11_max_incomplete_event_size": 2 * 2**20}
    if workers == 1:
        uvicorn.run("atlas_api.app:app_from_env", factory=True, host=host, port=port, log_level="warning", **line)
        return
    import socket

    from uvicorn.supervisors import Multiprocess

    # uvicorn binds its worker socket with protocol 0, so asyncio never sets TCP_NODELAY on accepted
    # connections and every keep-alive response waits ~40 ms (Nagle + delayed ACK). Bind it ourselves.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config("atlas_api.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                            log_level="warning", **line)
    Multiprocess(config, sockets=[sock]).run()


@main.command()
@click.option("--cache", type=click.Path(path_type=Path), default=Path("demo-data"), show_default=True,
              help="The planted family, MiniLM activations and trained SAEs are kept here: a rerun resumes.")
@click.option("--size", type=click.Choice(["default", "full", "tiny"]), default="default", show_default=True,
              help="default: the MiniLM family in <= 10 min on 2 idle cores; full: as `atlas minilm --full` "
                   "(about 1 h); tiny: seconds, to try the command itself.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.pass_obj
def demo(atlas, cache, size, host, port):
    """Serve at once, build beside the server: the planted-truth family (seconds), then `atlas serve`, then
    the real MiniLM family, each SAE and pair served as it lands (the home page shows what is still
    coming). Ctrl-C stops both; a rerun resumes from --cache."""
    from atlas_ingest.jobs.demo import run_demo

    try:
        run_demo(atlas, cache, size, host, port, log=click.echo)
    except KeyboardInterrupt:
        click.echo(f"stopped; `atlas demo` (or `make demo`) again resumes from {cache}", err=True)
        sys.exit(130)
