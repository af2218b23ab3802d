"""A small closed-loop HTTP load client (threads + http.client, keep-alive): `connections` clients each send
GET requests one after another for `seconds`, paths drawn at random; latencies of every request.

Used where wrk is not installed; a Python client takes some of the cores it measures, so compare rows
measured with the same client (each result says which).
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from urllib.parse import urlsplit


def run(base: str, paths: list[str], seconds: float, connections: int, seed: int = 0) -> dict:
    """p50/p99 latency (ms), requests per second and non-2xx count of `connections` clients over `seconds`."""
    url = urlsplit(base)
    lat: list[list[float]] = [[] for _ in range(connections)]
    bad = [0] * connections
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed + i)
        con = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                con.request("GET", rng.choice(paths))
                r = con.getresponse()
                r.read()
                lat[i].append(time.perf_counter() - t0)
                bad[i] += not 200 <= r.status < 300
        finally:
            con.close()

    pool = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall = time.perf_counter() - t0
    every = sorted(x for one in lat for x in one)
    if not every:
        raise RuntimeError(f"no request to {base} finished in {seconds} s")
    return {"p50_ms": 1000 * every[len(every) // 2], "p99_ms": 1000 * every[int(0.99 * (len(every) - 1))],
            "req_per_s": len(every) / wall, "requests": len(every), "non_2xx": sum(bad), "connections": connections,
            "seconds": wall, "client": "bench/load.py (Python threads)"}
