"""Wall-clock timing of a bench step: best of `repeat` calls, queued CUDA work waited for on both sides."""

from __future__ import annotations

import sys
import time


def sync() -> None:
    """Wait for the GPU (when torch is loaded and has CUDA), so a time covers the work a step launched."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1):
    """(best seconds of `repeat` calls of fn, the last call's result)."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out
