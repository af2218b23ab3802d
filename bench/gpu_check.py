"""`make gpu-check`: one JSON line about this machine's GPU path, in at most about 5 minutes on one GPU.

Checks (each function says what it compares): faiss-gpu against faiss-cpu; candidates against a bare matmul;
the dense co-firing state against its bare GEMMs and a float64 state, at 16k and (when it fits) 65k; the
sparse path on CUDA against the CPU; whether `make install-gpu`'s faiss works beside pip's torch. Without
CUDA it says so and exits 0 at once. A failed check records its error instead of stopping the others, and
each stops at its share of the time budget (saying how far it got).
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback

import numpy as np

from bench import record
from bench.timing import timed

BUDGET_S = 300.0
"""Wall-clock budget of the whole check; the correlation stops early (and says how far it got) to keep it."""


def check_faiss(report: dict) -> None:
    """faiss-gpu vs faiss-cpu exact inner-product top-16 on the same vectors."""
    import faiss

    from atlas.synth import unit

    rng = np.random.default_rng(0)
    base = unit(rng.standard_normal((16384, 2304), dtype=np.float32))
    queries = unit(base[:4096] + 0.5 * rng.standard_normal((4096, 2304), dtype=np.float32) / np.sqrt(2304))
    cpu = faiss.IndexFlatIP(2304)
    cpu.add(base)
    t_cpu, (d_cpu, i_cpu) = timed(lambda: cpu.search(queries, 16))
    res = faiss.StandardGpuResources()
    gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
    t_gpu, (d_gpu, i_gpu) = timed(lambda: gpu.search(queries, 16))
    report["faiss_topk_identical_rows"] = float((i_cpu == i_gpu).all(1).mean())
    report["faiss_topk_max_score_diff"] = float(np.abs(d_cpu - d_gpu).max())
    report["faiss_cpu_s"], report["faiss_gpu_s"] = t_cpu, t_gpu


def check_candidates(report: dict) -> None:
    """topk_both (both directions, blocked, on CUDA) vs one bare torch.matmul of the same shapes."""
    import torch

    from atlas.match.candidates import topk_both
    from atlas.synth import unit

    rng = np.random.default_rng(1)
    a = unit(rng.standard_normal((16384, 2304), dtype=np.float32))
    b = unit(a[rng.permutation(16384)] + 0.3 * rng.standard_normal((16384, 2304), dtype=np.float32) / np.sqrt(2304))
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    t_mm, _ = timed(lambda: ta @ tb.T, repeat=2)  # best of 2: the first warms up
    t_ours, _ = timed(lambda: topk_both(a, b, 16), repeat=2)
    report["candidates_16k_matmul_s"], report["candidates_16k_topk_both_s"] = t_mm, t_ours
    report["candidates_ratio_vs_matmul"] = t_ours / t_mm


class GpuPair:
    """Token blocks of a planted synthetic pair made on the GPU (log-normal firing rates, L0 ≈ 70, half
    of b's features 1.5× copies of a-features kept on 90% of their tokens), so generation costs ~nothing."""

    def __init__(self, d: int, seed: int = 0, l0: float = 70, dev: str = "cuda"):
        import torch

        self.gen = torch.Generator(device=dev).manual_seed(seed)
        self.d, self.dev = d, dev
        self.rate_a, self.rate_b = ((r * l0 / r.sum()).clamp(max=0.5)
                                    for r in (torch.randn(d, generator=self.gen, device=dev).exp() for _ in range(2)))
        self.pa, self.pb = (torch.randperm(d, generator=self.gen, device=dev)[: d // 2] for _ in range(2))

    def block(self, t: int):
        import torch

        def side(rate):
            x = torch.empty((t, self.d), device=self.dev).exponential_(generator=self.gen)
            return x * (torch.rand((t, self.d), generator=self.gen, device=self.dev) < rate)

        a, b = side(self.rate_a), side(self.rate_b)
        keep = torch.rand((t, len(self.pa)), generator=self.gen, device=self.dev) < 0.9
        b[:, self.pb] = 1.5 * a[:, self.pa] * keep
        return a, b


def _bare_gemms(st, pair: GpuPair, blocks: int) -> dict:
    """The bound of a dense state: per token block, the two GEMMs alone with the state's tiling, on one
    block repeated: bf16 Aᵀ·B (float32 out) and int8 1[A>0]ᵀ·1[B>0] ("two bare GEMMs at the same
    precision"), and the GEMMs the state's precision runs (bf16x3: K = 3 × tokens)."""
    import torch

    from atlas_ingest.cofiring import dense as dense_cofiring

    A, B = pair.block(st.block_tokens)
    fa, fb = ((m > 0).T.contiguous().to(torch.int8) for m in (A, B))
    ha, hb = (m.T.contiguous().to(torch.bfloat16) for m in (A, B))
    xa, xb = st._operands(A, B)
    rows = max(17, dense_cofiring.TILE_BYTES // (4 * st.d_b))

    def plain():
        for r0 in range(0, st.d_a, rows):
            try:
                torch.mm(ha[r0:r0 + rows], hb.T, out_dtype=torch.float32)
            except (RuntimeError, TypeError):
                with dense_cofiring._fp32_matmul("high"):
                    ha[r0:r0 + rows].float() @ hb.float().T
            st._mm_count(fa[r0:r0 + rows], fb)

    def kernels():
        for r0 in range(0, st.d_a, rows):
            st._mm_sab(xa[r0:r0 + rows], xb)
            st._mm_count(fa[r0:r0 + rows], fb)

    out = {}
    for name, fn in (("bare_two_gemms_s", plain), ("bare_state_kernels_s", kernels)):
        fn()  # warm-up
        t, _ = timed(lambda fn=fn: [fn() for _ in range(min(blocks, 8))])
        out[name] = t * blocks / min(blocks, 8)
    return out


def check_dense(report: dict, d: int, tokens: int, deadline: float, dev: str = "cuda") -> None:
    """A dense d × d state (bf16x3) over up to `tokens` synthetic tokens made on the GPU (the making is not
    timed), then top-16 both ways; against its bare GEMMs over the same number of token blocks. (`dev`
    "cpu" runs the same steps at toy sizes, for the tests.)"""
    import torch

    from atlas_ingest.cofiring import dense as dense_cofiring
    from atlas_ingest.cofiring import DenseCoFiring

    key = f"dense_{d}"
    if dev == "cuda" and not dense_cofiring.fits(d, d, torch.device(dev)):
        report[f"{key}_skipped"] = f"a {d} x {d} state does not fit this GPU's free memory"
        return
    cuda = dev == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    pair = GpuPair(d, seed=d, dev=dev)
    st = DenseCoFiring(d, d, dev=torch.device(dev), precision="bf16x3")
    t_ours = 0.0
    while st.n < tokens and time.perf_counter() < deadline:
        A, B = pair.block(st.block_tokens)
        t, _ = timed(lambda: st.add(A, B))
        t_ours += t
        del A, B
    t_topk, cand = timed(lambda: st.finish().topk(16))
    blocks = max(1, st.n // st.block_tokens)
    bare = _bare_gemms(st, pair, blocks)
    planted = dict(zip(pair.pa.tolist(), pair.pb.tolist()))
    report.update({f"{key}_tokens": st.n, f"{key}_s": t_ours, f"{key}_tokens_per_s": st.n / t_ours,
                   f"{key}_topk_s": t_topk, **{f"{key}_{k}": v for k, v in bare.items()},
                   f"{key}_ratio_vs_two_gemms": t_ours / bare["bare_two_gemms_s"],
                   f"{key}_ratio_vs_state_kernels": t_ours / bare["bare_state_kernels_s"],
                   f"{key}_planted_top1": float(np.mean([cand.a2b_index[i, 0] == j for i, j in planted.items()])),
                   f"{key}_kernels": st.kernels, f"{key}_block_tokens": st.block_tokens,
                   f"{key}_state_gb": dense_cofiring.state_bytes(d, d, st.precision) / 2**30,
                   f"{key}_gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None})


def check_dense_exact(report: dict, d: int = 16384, tokens: int = 32768, dev: str = "cuda") -> None:
    """The GPU precision (bf16x3) against a float64 state on the same tokens: max |Δr| over every pair,
    counts equal, top-16 identical."""
    import torch

    from atlas_ingest.cofiring import DenseCoFiring

    pair = GpuPair(d, seed=7, dev=dev)
    fast = DenseCoFiring(d, d, dev=torch.device(dev), precision="bf16x3")
    ref = DenseCoFiring(d, d, dev=torch.device(dev), precision="float64")
    while fast.n < tokens:
        A, B = pair.block(4096)
        fast.add(A, B)
        ref.add(A.double(), B.double())
    fast.finish(), ref.finish()
    dr, dc = 0.0, 0
    for r0 in range(0, d, 2048):
        rows = slice(r0, r0 + 2048)
        dr = max(dr, float((fast._r(rows, slice(None)) - ref._r(rows, slice(None))).abs().max()))
        dc = max(dc, int((fast.cnt[rows] - ref.cnt[rows]).abs().max()))
    cf, cr = fast.topk(16), ref.topk(16)
    report.update({"dense_exact_tokens": fast.n, "dense_exact_max_abs_r_diff": dr, "dense_exact_max_count_diff": dc,
                   "dense_exact_same_top16_rows": float((cf.a2b_index == cr.a2b_index).all(1).mean()),
                   "dense_exact_target": "|dr| <= 1e-4, counts equal"})


def check_correlation(report: dict, deadline: float) -> None:
    """The sparse capped path (what runs where a dense state does not fit) on a 16k × 16k synthetic pair:
    products on CUDA over up to 1M tokens (until the deadline), and CUDA equal to the CPU (scipy) path on a
    20k-token slice."""
    import torch

    from bench.correlation import Synthetic
    from atlas_ingest.cofiring import SparseCoFiring

    small = list(Synthetic(16384, 16384, 20_000, seed=3))
    out = {}
    for name, dev in (("cpu", None), ("cuda", torch.device("cuda"))):
        st = SparseCoFiring(16384, 16384, dev=dev)
        for A, B in small:
            st.add(A, B)
        cand = st.topk(16)
        out[name] = (cand, st.stats(np.repeat(np.arange(16384), 16), cand.a2b_index.ravel()))
    (c0, s0), (c1, s1) = out["cpu"], out["cuda"]
    report["corr_cuda_vs_cpu_max_diff"] = float(max(np.abs(s0[k] - s1[k]).max() for k in s0))
    report["corr_cuda_vs_cpu_same_topk"] = bool((c0.a2b_index == c1.a2b_index).all() and (c0.b2a_index == c1.b2a_index).all())
    st = SparseCoFiring(16384, 16384, dev=torch.device("cuda"))
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
    report["commit"] = (record.commit()["commit"] or "")[:7] or None
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
    share = [t_start + f * BUDGET_S for f in (0.3, 0.7, 1.0)]  # deadlines at these fractions of the budget
    checks = [("faiss", lambda: check_faiss(report)), ("candidates", lambda: check_candidates(report)),
              ("dense_16384", lambda: check_dense(report, 16384, 1_000_000, share[0])),
              ("dense_exact", lambda: check_dense_exact(report)),
              ("dense_65536", lambda: check_dense(report, 65536, 1_000_000, share[1])),
              ("correlation", lambda: check_correlation(report, share[2]))]
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
    # the faiss check ran only on a GPU build that sees a GPU
    report["install_gpu_works"] = "faiss_topk_identical_rows" in report and report["torch_cuda_after_faiss"]
    report["seconds"] = time.perf_counter() - t_start
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
