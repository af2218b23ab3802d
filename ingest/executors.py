"""Where tasks run: in this process (default) or on a Ray cluster (`pip install .[distributed]`).

Both yield results as tasks finish. Ray tasks ask for a GPU when the cluster has one and a CPU
otherwise, and are retried by Ray when their worker dies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


class InProcess:
    name = "in-process"

    def map(self, fn: Callable, items: Iterable, *args) -> Iterator:
        for item in items:
            yield fn(item, *args)

    def close(self) -> None:
        pass


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 3):
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray: pip install 'feature-atlas[distributed]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kwargs = {"address": address} if address else {"num_cpus": num_cpus}
            ray.init(**kwargs, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})  # one core per task
        gpus = ray.cluster_resources().get("GPU", 0)
        self.options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        self.max_retries = max_retries

    def map(self, fn: Callable, items: Iterable, *args) -> Iterator:
        remote = self.ray.remote(max_retries=self.max_retries, **self.options)(fn)
        pending = [remote.remote(item, *args) for item in items]
        while pending:
            done, pending = self.ray.wait(pending, num_returns=1)
            yield self.ray.get(done[0])

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(name: str, address: str | None = None, num_cpus: int | None = None):
    if name == "in-process":
        return InProcess()
    if name == "ray":
        return RayExecutor(address, num_cpus)
    raise ValueError(f"unknown executor {name!r}; known: in-process, ray")
