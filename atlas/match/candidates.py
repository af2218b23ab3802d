"""Top-k candidates in both directions from one blocked GEMM (exact), or from a FAISS index (approximate).

One pass over A in row blocks computes S_blk = A_blk · Bᵀ, keeps each row's top-k (a→b) and merges each
column's top-k into a running best (b→a): both directions for the price of one matrix product, and
never more than block × n_b scores in memory. CUDA when torch sees a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Candidates:
    a2b_score: np.ndarray  # [n_a, k]
    a2b_index: np.ndarray  # [n_a, k]
    b2a_score: np.ndarray  # [n_b, k]
    b2a_index: np.ndarray  # [n_b, k]
    a_absmax: np.ndarray | None = None  # [n_a] best |cosine| of each a row in b (cos only, when asked)
    b_absmax: np.ndarray | None = None  # [n_b]


def edges(c: Candidates) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of a→b and b→a candidate edges, each once: (feature_a, feature_b, score)."""
    n_a, k = c.a2b_index.shape
    n_b, kb = c.b2a_index.shape
    fa = np.concatenate([np.repeat(np.arange(n_a), k), c.b2a_index.ravel()])
    fb = np.concatenate([c.a2b_index.ravel(), np.repeat(np.arange(n_b), kb)])
    sc = np.concatenate([c.a2b_score.ravel(), c.b2a_score.ravel()])
    ok = (fa >= 0) & (fb >= 0)  # FAISS pads with -1
    fa, fb, sc = fa[ok], fb[ok], sc[ok]
    _, first = np.unique(fa.astype(np.int64) * n_b + fb, return_index=True)
    return fa[first], fb[first], sc[first]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _prepare(x: np.ndarray, kind: str, dev) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=dev)
    if kind == "cos":  # each row scaled by its largest |entry| first: no square overflows or underflows
        scale = torch.maximum(t.amax(1, keepdim=True), -t.amin(1, keepdim=True)) if t.shape[1] else t[:, :1]
        t = t / torch.where(scale > 0, scale, torch.ones_like(scale))  # (atlas.index.row_norms, on the device)
        t = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return t


@torch.no_grad()
def topk_both(a: np.ndarray, b: np.ndarray, k: int, kind: str = "cos", block: int = 4096,
              absmax: bool = False) -> Candidates:
    """kind 'cos': highest cosine first; kind 'mse': lowest ‖a−b‖²/d first (scores are the MSEs).
    absmax (cos only): also each row's best |cosine| in the other SAE, from the same products (PW-MCC)."""
    dev = device()
    A, B = _prepare(a, kind, dev), _prepare(b, kind, dev)
    n_a, n_b, d = A.shape[0], B.shape[0], A.shape[1]
    ka, kb = min(k, n_b), min(k, n_a)
    if kind == "mse":
        na2, nb2 = (A * A).sum(1), (B * B).sum(1)
    row_v, row_i = [], []
    col_v = torch.full((kb, n_b), -torch.inf, device=dev)
    col_i = torch.zeros((kb, n_b), dtype=torch.long, device=dev)
    absmax = absmax and kind == "cos"
    row_abs, col_abs = [], torch.zeros(n_b, device=dev)
    for s in range(0, n_a, block):
        S = A[s:s + block] @ B.T
        if absmax:
            S_abs = S.abs()
            row_abs.append(S_abs.amax(1))
            col_abs = torch.maximum(col_abs, S_abs.amax(0))
            del S_abs
        if kind == "mse":  # negative squared distance, so that larger is better throughout
            S.mul_(2).sub_(na2[s:s + block, None]).sub_(nb2[None, :])
        v, i = S.topk(ka, dim=1)
        row_v.append(v), row_i.append(i)
        cv, ci = S.topk(min(kb, S.shape[0]), dim=0)
        v2, o = torch.cat([col_v, cv]).topk(kb, dim=0)
        col_i = torch.cat([col_i, ci + s]).gather(0, o)
        col_v = v2
    rv, cv = torch.cat(row_v), col_v.T
    if kind == "mse":
        rv, cv = (-rv).clamp_min(0) / d, (-cv).clamp_min(0) / d
    extra = (torch.cat(row_abs).cpu().numpy(), col_abs.cpu().numpy()) if absmax else (None, None)
    return Candidates(rv.cpu().numpy(), torch.cat(row_i).cpu().numpy(), cv.cpu().numpy(), col_i.T.cpu().numpy(), *extra)


@torch.no_grad()
def full_scores(a: np.ndarray, b: np.ndarray, kind: str = "cos") -> np.ndarray:
    """[n_a, n_b] cosines (or MSEs) by the same products as topk_both, for small pairs."""
    A, B = _prepare(a, kind, torch.device("cpu")), _prepare(b, kind, torch.device("cpu"))
    S = A @ B.T
    if kind == "mse":
        S = (-(S.mul_(2).sub_((A * A).sum(1)[:, None]).sub_((B * B).sum(1)[None, :]))).clamp_min(0) / A.shape[1]
    return S.numpy()


def topk_faiss(a: np.ndarray, b: np.ndarray, k: int, index_a=None, index_b=None) -> Candidates:
    """Cosine candidates through FAISS indexes (used for approximate indexes on very wide SAEs)."""
    from .. import index as fx

    index_a = index_a if index_a is not None else fx.build(a)
    index_b = index_b if index_b is not None else fx.build(b)
    sa, ia = fx.search(index_b, a, k)
    sb, ib = fx.search(index_a, b, k)
    return Candidates(sa, ia, sb, ib)
