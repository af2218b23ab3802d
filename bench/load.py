"""Bounded HTTP load on loopback: wrk when asked for and installed (`make wrk`), else a small Python client.

Both return the same record (p50_ms, p99_ms, req_per_s, non_2xx, connections, client), so a bench JSON says
which client measured it. wrk is a C load generator and takes little of a 2-core machine; the Python client
(one thread and one keep-alive connection per connection) takes a share of the CPU the server would have,
so its rates are a lower bound. `make test` uses the Python client only: nothing outside the venv.
"""

from __future__ import annotations

import http.client
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

CLIENTS = ("auto", "wrk", "python")


def http_load(paths: list[str], base: str, seconds: float, connections: int, client: str = "auto",
              once: bool = False) -> dict:
    """GET random `paths` of `base` from `connections` connections for `seconds`. client: 'wrk', 'python',
    or 'auto' (wrk when it is on the PATH). `once`: each path once, until the deadline (the Python client)."""
    if client not in CLIENTS:
        raise ValueError(f"unknown load client {client!r}; known: {', '.join(CLIENTS)}")
    wrk = shutil.which("wrk")
    if client == "wrk" and wrk is None:
        raise FileNotFoundError("no wrk on the PATH: `make wrk` installs it (as root), or use the python client")
    if client == "python" or wrk is None or once:
        return python_load(paths, base, seconds, connections, once)
    return wrk_load(wrk, paths, base, seconds, connections)


def wrk_load(wrk: str, paths: list[str], base: str, seconds: float, connections: int) -> dict:
    script = Path(tempfile.mkdtemp()) / "paths.lua"
    script.write_text("paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n"
                      "request = function() return wrk.format('GET', paths[math.random(#paths)]) end\n")
    out = subprocess.run([wrk, "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", str(script), base],
                         capture_output=True, text=True, timeout=seconds + 30).stdout

    def ms(label):
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v = float(m.group(1))
        return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms(50), "p99_ms": ms(99), "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "non_2xx": int(errors.group(1)) if errors else 0, "connections": connections, "client": "wrk"}


def python_load(paths: list[str], base: str, seconds: float, connections: int, once: bool = False) -> dict:
    """One thread per connection, each a keep-alive http.client connection, until the deadline (or, `once`,
    until its share of the paths was asked)."""
    url = urlsplit(base)
    lat: list[list[float]] = [[] for _ in range(connections)]
    bad = [0] * connections
    deadline = time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = random.Random(i)
        todo = iter(paths[i::connections]) if once else iter(lambda: rng.choice(paths), None)
        con = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        for path in todo:
            if time.perf_counter() >= deadline:
                break
            t0 = time.perf_counter()
            try:
                con.request("GET", path)
                r = con.getresponse()
                r.read()
            except (OSError, http.client.HTTPException):  # a dropped connection counts as a failed request
                bad[i] += 1
                con.close()
                continue
            lat[i].append(time.perf_counter() - t0)
            bad[i] += not 200 <= r.status < 400
        con.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    every = sorted(x for chunk in lat for x in chunk)
    if not every:
        raise RuntimeError(f"no request to {base} finished in {seconds} s")
    return {"p50_ms": 1000 * every[len(every) // 2], "p99_ms": 1000 * every[int(0.99 * (len(every) - 1))],
            "req_per_s": len(every) / wall, "requests": len(every), "non_2xx": sum(bad), "connections": connections,
            "client": "python threads", **({"asked": len(paths), "time_limit_s": seconds} if once else {})}
