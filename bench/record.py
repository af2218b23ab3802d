"""What every bench result records beside its numbers, so a number can be traced to its code and host:
the git commit and whether the tree had uncommitted changes, the host (CPU, cores, memory, GPU), the
library versions and the parameters of the run."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from importlib import metadata as md
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("feature-atlas", "numpy", "scipy", "torch", "faiss-cpu", "faiss-gpu-cu12", "duckdb", "pyarrow", "sae-lens",
            "litestar", "uvicorn", "ray", "transformers")


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit() -> dict:
    """HEAD and whether tracked files differ from it (results written by this run do not count)."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return None


def _gpu() -> str | None:
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return None


def host() -> dict:
    cores = os.cpu_count()
    with contextlib.suppress(AttributeError):
        cores = len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    return {"cpu": _cpu_model(), "cores": cores, "memory_gb": _memory_gb(), "gpu": _gpu(),
            "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def metadata(params: dict) -> dict:
    """The `meta` block of a bench JSON: taken once, before any section runs."""
    return {**commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": host(),
            "versions": versions(), "params": {k: str(v) if isinstance(v, Path) else v for k, v in params.items()}}
