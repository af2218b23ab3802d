"""`atlas demo` (what `make demo` runs): serve at once, build beside the server.

The planted-truth family first (seconds), then `atlas serve` in a child process, then the MiniLM family in
the foreground, each SAE and pair published as it lands (the server switches to each new snapshot). The
build writes its progress beside the atlas (atlas/status.py) for the explorer's home page. Ctrl-C stops
both; what finished is cached (activations, trained SAEs) or published, so a rerun resumes.
"""

from __future__ import annotations

import itertools
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

from atlas.methods import SIBLING_METHODS
from atlas.status import StatusWriter
from atlas.store import Atlas
from atlas.synth import SynthConfig, generate, n_saes
from atlas_ingest.jobs.family import STEPS, FamilyPlan, build_family
from atlas_ingest.server_process import Server
from atlas_ingest.training import TrainConfig

SIZES = ("tiny", "default", "full")
PLANTED = ("planted SAEs", "planted matches", "planted widths")


def plans(size: str) -> tuple[SynthConfig, FamilyPlan]:
    """The planted family and the MiniLM plan of a size: default (≤ 10 min on 2 idle cores), full (the
    larger family, about 1 h), tiny (seconds: for smoke tests of the command itself)."""
    if size == "tiny":
        return (SynthConfig(d_in=64, d_sae=64, n_layers=3, n_seeds=2, second_dataset=False, widths=()),
                FamilyPlan(layers=[0, 1], seeds=[], sibling_layers=[], code_layers=[], widths=[], flow_layers=[],
                           max_tokens=4000, corr_tokens=None,
                           train=TrainConfig(d_sae=32, samples=40_000, batch=512, eval_tokens=500)))
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; known: {', '.join(SIZES)}")
    return SynthConfig(widths=(1024, 2048)), FamilyPlan.full() if size == "full" else FamilyPlan()


def build_planted(atlas: Atlas, cfg: SynthConfig, out: Path, status: StatusWriter) -> None:
    """The planted-truth family (as `atlas synth` writes it), matched at layer distance <= 2, between siblings
    and across its widths (so the width tree answers on it); a rerun finds it stored and matched."""
    from atlas.match.params import MatchParams
    from atlas.queries.selection import select_pairs
    from atlas_ingest.jobs.ingest import ingest_paths
    from atlas_ingest.jobs.match import run_match
    from atlas_ingest.jobs.widths import run_widths

    total, count = n_saes(cfg), itertools.count(1)
    folders = generate(cfg, out)
    done = ingest_paths(atlas, folders, progress=lambda *_: status.update(PLANTED[0], next(count), total, unit="SAEs"))
    status.update(PLANTED[0], total, total)
    ours = set(done.added + done.replaced + done.unchanged + done.merged)
    with atlas.read() as con:
        jobs = [([p for p in select_pairs(con, sel, distance=2) if p[0] in ours and p[1] in ours], methods)
                for sel, methods in (("distance", ["decoder_cos"]), ("siblings", list(SIBLING_METHODS)))]
        widths = [p for p in select_pairs(con, "widths") if p[0] in ours and p[1] in ours]
    n, count = sum(len(p) * len(m) for p, m in jobs), itertools.count(1)
    status.update(PLANTED[1], 0, n, unit="pairs")
    for pairs, methods in jobs:
        run_match(atlas, pairs, methods, MatchParams(), progress=lambda *_: status.update(PLANTED[1], next(count), n))
    count = itertools.count(1)
    status.update(PLANTED[2], 0, len(widths), unit="pairs")
    run_widths(atlas, widths, progress=lambda a, b: status.update(PLANTED[2], next(count), len(widths), f"{a} / {b}"))


@contextmanager
def _stop_signals():
    """Ctrl-C and `kill` stop the demo (server stopped, status written), not half-way. The flag it yields
    says a stop was asked for: a library may turn the interrupt into its own error (DuckDB raises
    InterruptException for a SIGINT during a query), which is still a stop, not a failure."""
    asked: list[int] = []

    def stop(signum, _frame):
        asked.append(signum)
        raise KeyboardInterrupt
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_demo(atlas: Atlas, cache: Path, size: str = "default", host: str = "127.0.0.1", port: int = 8000,
             log=print) -> None:
    """Planted family, server, MiniLM family; then keep serving until Ctrl-C (or SIGTERM)."""
    synth_cfg, plan = plans(size)
    url = f"http://{host}:{port}/"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # before any work, not after
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no conflict
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot serve on {host}:{port} ({e.strerror}): pick another port, e.g. "
                             f"`make demo PORT=8001` or `atlas demo --port 8001`") from None
    log(f"Feature Atlas demo: {url} (answers in seconds, once the planted family is in; the MiniLM family is "
        f"built beside it, progress on that page; Ctrl-C stops both, a rerun resumes from {cache})")
    status = StatusWriter(atlas.path, [*PLANTED, *(f"MiniLM {s}" for s in STEPS)])
    server = None
    with _stop_signals() as asked:
        try:
            with status.running(f"stopped by Ctrl-C; a rerun resumes from {cache}", asked):
                build_planted(atlas, synth_cfg, cache / "synth", status)
                server = Server(atlas.path, host, port)
                try:
                    server.wait_ready()
                except RuntimeError as e:  # its own error is above, on stderr
                    raise RuntimeError(f"{e}; if the port is taken, pick another: `make demo PORT=8001`") from None
                log(f"serving {url} (API under /api, docs at /schema); building the MiniLM family ({size})")
                build_family(atlas, plan, cache / "minilm", log=log,
                             progress=lambda step, *progress: status.update(f"MiniLM {step}", *progress))
            log(f"MiniLM family ready; serving {url} until Ctrl-C")
            server.proc.wait()
            raise RuntimeError(f"the server stopped (exit {server.proc.returncode})")
        except BaseException as e:
            if asked and not isinstance(e, KeyboardInterrupt):  # a library reported the interrupt as its own error
                raise KeyboardInterrupt from None
            raise
        finally:
            if server is not None:
                server.stop()
