"""The build status file: what a long build (`atlas demo`, `atlas minilm`) has done and what is still coming.

The build writes `atlas.files/build.json` (replaced whole at each change, so a reader never sees half a
file); the server's `/api/build` reads it and the explorer's home page polls that. What is *served* is
whatever the build has published so far: this file only says how far along it is.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .store.parts import write_atomic
from .store.snapshot import files_dir

FILE = "build.json"
STATES = ("running", "done", "stopped", "failed")


def status_path(atlas_path: str | Path) -> Path:
    """atlas.duckdb -> atlas.files/build.json (the atlas's side folder, see Atlas.dir)."""
    p = Path(atlas_path)
    return files_dir(p) / FILE


@dataclass
class Step:
    name: str
    done: int = 0
    total: int | None = None
    """None until the step starts and knows its size."""
    item: str | None = None
    """What it is at (an SAE being trained, the last pair matched)."""
    unit: str | None = None
    """What done and total count (tokens, samples, pairs, SAEs, ablations); None: items."""


@dataclass
class BuildStatus:
    steps: list[Step]
    state: str = "running"
    message: str = ""
    pid: int = field(default_factory=os.getpid)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)


class StatusWriter:
    """Keeps a BuildStatus and writes it beside the atlas at each change (at most every `every` seconds
    within a step, always when a step starts or completes and when the build ends)."""

    def __init__(self, atlas_path: str | Path, steps: list[str], every: float = 0.5):
        self.path = status_path(atlas_path)
        self.status = BuildStatus([Step(s) for s in steps])
        self.every = every
        self._written = 0.0
        self._write()

    def update(self, step: str, done: int, total: int | None, item: str | None = None, unit: str | None = None) -> None:
        s = next((s for s in self.status.steps if s.name == step), None)
        if s is None:
            s = Step(step)
            self.status.steps.append(s)
        started = s.total != total  # a step that starts (or resizes) is always written: the throttle must not
        s.done, s.total, s.item = done, total, item if item is not None else s.item  # hide it until its first item ends
        s.unit = unit if unit is not None else s.unit
        if started or done == total or time.monotonic() - self._written >= self.every:
            self._write()

    def finish(self, state: str, message: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown build state {state!r}; known: {', '.join(STATES)}")
        self.status.state, self.status.message = state, message
        self._write()

    @contextmanager
    def running(self, stopped: str, asked=()):
        """The build's body: done when it returns; on Ctrl-C (or when `asked` is non-empty: a library reported
        the interrupt as its own error) stopped with the message `stopped`; failed on any other error."""
        try:
            yield self
        except BaseException as e:
            if self.status.state == "running":
                if isinstance(e, KeyboardInterrupt) or asked:
                    self.finish("stopped", stopped)
                else:
                    self.finish("failed", " ".join(str(e).split())[:300])
            raise
        self.finish("done", "every step is built and served")

    def _write(self) -> None:
        self.status.updated = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(asdict(self.status))))
        self._written = time.monotonic()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(atlas_path: str | Path) -> BuildStatus | None:
    """The last status written beside this atlas, or None. A 'running' build whose process is gone (killed
    without a chance to say so) reads as 'stopped'."""
    path = status_path(atlas_path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    known = set(Step.__dataclass_fields__)  # a file written by another version: its fields that this one knows
    status = BuildStatus(**{**raw, "steps": [Step(**{k: v for k, v in s.items() if k in known}) for s in raw["steps"]]})
    if status.state == "running" and not _alive(status.pid):
        status.state, status.message = "stopped", f"the build (process {status.pid}) ended without finishing"
    return status
