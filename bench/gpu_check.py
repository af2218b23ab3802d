"""`make gpu-check`: one JSON line about this machine's GPU path, in at most about 5 minutes on one GPU.

It reports faiss.get_num_gpus(); whether faiss-gpu and faiss-cpu return the same top-k; candidates
16k × 16k × 2304 on the GPU (atlas.match.candidates.topk_both) against a bare torch.matmul of the same
shapes; co-firing statistics of a synthetic 16k pair over up to 1M tokens with the products on CUDA
(ingest.correlate), equal to the CPU path within 1e-6 on a slice; and whether the installed faiss is a
GPU build that works beside pip's torch (what `make install-gpu` should give). Without CUDA it says so
and exits 0 at once. Each check records its error instead of stopping the others.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
import traceback

import numpy as np

BUDGET_S = 270.0
"""Wall-clock budget of the whole check; the correlation stops early (and says how far it got) to keep it."""


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn):
    _sync()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    return time.perf_counter() - t0, out


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def check_faiss(report: dict) -> None:
    """faiss-gpu vs faiss-cpu exact inner-product top-16 on the same vectors."""
    import faiss

    rng = np.random.default_rng(0)
    base, queries = _unit(rng.standard_normal((16384, 2304), dtype=np.float32)), None
    queries = _unit(base[:4096] + 0.5 * rng.standard_normal((4096, 2304), dtype=np.float32) / np.sqrt(2304))
    cpu = faiss.IndexFlatIP(2304)
    cpu.add(base)
    t_cpu, (d_cpu, i_cpu) = _timed(lambda: cpu.search(queries, 16))
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
    t_gpu, (d_gpu, i_gpu) = _timed(lambda: gpu.search(queries, 16))
    report["faiss_topk_identical_rows"] = float((i_cpu == i_gpu).all(1).mean())
    report["faiss_topk_max_score_diff"] = float(np.abs(d_cpu - d_gpu).max())
    report["faiss_cpu_s"], report["faiss_gpu_s"] = t_cpu, t_gpu


def check_candidates(report: dict) -> None:
    """topk_both (both directions, blocked, on CUDA) vs one bare torch.matmul of the same shapes."""
    import torch

    from atlas.match.candidates import topk_both

    rng = np.random.default_rng(1)
    a = _unit(rng.standard_normal((16384, 2304), dtype=np.float32))
    b = _unit(a[rng.permutation(16384)] + 0.3 * rng.standard_normal((16384, 2304), dtype=np.float32) / np.sqrt(2304))
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    _timed(lambda: ta @ tb.T)  # warm-up
    t_mm, _ = _timed(lambda: ta @ tb.T)
    topk_both(a, b, 16)  # warm-up
    t_ours, _ = _timed(lambda: topk_both(a, b, 16))
    report["candidates_16k_matmul_s"], report["candidates_16k_topk_both_s"] = t_mm, t_ours
    report["candidates_ratio_vs_matmul"] = t_ours / t_mm


def check_correlation(report: dict, deadline: float) -> None:
    """A 16k × 16k synthetic pair: products on CUDA over up to 1M tokens (until the deadline), and CUDA
    equal to the CPU (scipy) path on a 20k-token slice."""
    import torch

    from bench.correlation import Synthetic
    from ingest.correlate import CoFiring

    small = list(Synthetic(16384, 16384, 20_000, seed=3))
    out = {}
    for name, dev in (("cpu", None), ("cuda", torch.device("cuda"))):
        st = CoFiring(16384, 16384, dev=dev)
        for A, B in small:
            st.add(A, B)
        cand = st.topk(16)
        out[name] = (cand, st.stats(np.repeat(np.arange(16384), 16), cand.a2b_index.ravel()))
    (c0, s0), (c1, s1) = out["cpu"], out["cuda"]
    report["corr_cuda_vs_cpu_max_diff"] = float(max(np.abs(s0[k] - s1[k]).max() for k in s0))
    report["corr_cuda_vs_cpu_same_topk"] = bool((c0.a2b_index == c1.a2b_index).all() and (c0.b2a_index == c1.b2a_index).all())
    st = CoFiring(16384, 16384, dev=torch.device("cuda"))
    t0 = time.perf_counter()
    for A, B in Synthetic(16384, 16384, 1_000_000, seed=0):
        st.add(A, B)
        if time.perf_counter() > deadline:
            break
    st.finish()
    report["corr_16k_tokens"] = st.n
    report["corr_16k_s"] = time.perf_counter() - t0
    report["corr_16k_pairs_kept"] = int(sum(b.nnz for b in st.blocks))
    report["corr_16k_error_bound"] = st.error_bound
    report["corr_16k_gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20


def main() -> int:
    t_start = time.perf_counter()
    report: dict = {"check": "gpu", "host": platform.node(), "python": platform.python_version()}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        report["commit"] = commit or None
    except (OSError, subprocess.SubprocessError):
        report["commit"] = None
    import torch

    report.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda=torch.cuda.is_available())
    try:
        import faiss

        report["faiss"] = faiss.__version__
        report["faiss_gpu_build"] = hasattr(faiss, "StandardGpuResources")
        report["faiss_num_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    except ImportError as e:
        report.update(faiss=None, faiss_gpu_build=False, faiss_num_gpus=0, faiss_error=str(e))
    if not report["cuda"]:
        report["skipped"] = "no CUDA device (torch.cuda.is_available() is False): nothing to check on a GPU"
        print(json.dumps(report))
        return 0
    report["gpu"] = torch.cuda.get_device_name(0)
    checks = [("faiss", lambda: check_faiss(report)), ("candidates", lambda: check_candidates(report)),
              ("correlation", lambda: check_correlation(report, t_start + BUDGET_S))]
    for name, fn in checks:
        if name == "faiss" and not (report["faiss_gpu_build"] and report["faiss_num_gpus"]):
            report["faiss_skipped"] = "faiss is a CPU build here: run `make install-gpu`"
            continue
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others
            report[f"{name}_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
    # after faiss's GPU search, torch's CUDA must still work in the same process
    try:
        x = torch.ones(1024, 1024, device="cuda")
        report["torch_cuda_after_faiss"] = bool(float((x @ x).sum()) == 1024.0 ** 3)
    except Exception as e:  # noqa: BLE001
        report["torch_cuda_after_faiss"] = False
        report["torch_error"] = str(e)
    report["install_gpu_works"] = bool(report.get("faiss_gpu_build") and report.get("faiss_num_gpus")
                                       and "faiss_error" not in report and report.get("faiss_topk_identical_rows") is not None
                                       and report["torch_cuda_after_faiss"])
    report["seconds"] = time.perf_counter() - t_start
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
