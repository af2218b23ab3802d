"""Match one pair of SAEs by one method: candidates → one-to-one assignment → matches rows and stats.

A pure function of the weights and parameters: it reads and writes nothing, so it runs the same in a
job, a test, a benchmark or a remote worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..index import APPROX_FROM
from ..methods import METHODS, WEIGHT_METHODS, folded_decoder, method as method_info
from ..sae import SAEWeights
from .assign import DENSE_MAX, assign_dense, assign_sparse
from .candidates import Candidates, edges, full_scores, topk_both, topk_faiss
from .consistency import consistency
from .params import MatchParams
from .stats import pair_stats


@dataclass
class PairResult:
    matches: pa.Table  # sae_a, feature_a, sae_b, feature_b, method, score, rank, assigned, rank_b
    stats: dict
    baselines: list[dict] = field(default_factory=list)
    """Random baselines computed for this pair (random_baselines rows): the atlas keeps them (consistency.py)."""


def _gain(distance: bool, score: np.ndarray, sq_a: np.ndarray, sq_b: np.ndarray, floor: float, d: int):
    """Worth of matching over leaving alone. MSE: match when mse < (1−floor)(‖a‖²+‖b‖²)/d, which for
    equal-norm rows is exactly cosine > floor."""
    if distance:
        return (1 - floor) * (sq_a + sq_b) / d - score
    return score - floor


def _ranks(fa: np.ndarray, score: np.ndarray, distance: bool) -> np.ndarray:
    """Rank of each edge among its feature's edges (fa: feature_a or feature_b ids), 1 = best."""
    order = np.lexsort((score if distance else -score, fa))
    sorted_fa = fa[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_fa)) + 1]
    pos = np.arange(len(fa)) - np.repeat(starts, np.diff(np.r_[starts, len(fa)]))
    rank = np.empty(len(fa), dtype=np.int16)
    rank[order] = (pos + 1).clip(max=np.iinfo(np.int16).max)
    return rank


def match_pair(a: SAEWeights, b: SAEWeights, sae_a: str, sae_b: str, params: MatchParams,
               baselines: dict | None = None) -> PairResult:
    """`baselines`: the random baselines the atlas keeps (consistency.baseline_key -> value), so that a
    pair of a known shape does not compute its own."""
    method, m = params.method, METHODS.get(params.method)
    if m is None or m.vectors is None:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(WEIGHT_METHODS)}")
    va, vb = m.vectors(a), m.vectors(b)
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"{sae_a} (d_in {va.shape[1]}) and {sae_b} (d_in {vb.shape[1]}) live in spaces of "
                         f"different width: {method} cannot compare them")
    distance = m.is_distance
    n_a, n_b, d = len(va), len(vb), va.shape[1]
    sq_a = (va.astype(np.float64) ** 2).sum(1) if distance else np.zeros(n_a)
    sq_b = (vb.astype(np.float64) ** 2).sum(1) if distance else np.zeros(n_b)
    if not distance and min(n_a, n_b) >= APPROX_FROM:  # very wide SAEs: approximate (HNSW) search
        cand = topk_faiss(va, vb, params.k)
    else:
        cand = topk_both(va, vb, params.k, kind="mse" if distance else "cos", absmax=m.consistency)
    fa, fb, score = edges(cand)
    gain = _gain(distance, score, sq_a[fa], sq_b[fb], params.floor, d)

    solver = params.solver if params.solver != "auto" else ("dense" if n_a * n_b <= DENSE_MAX else "sparse")
    full = None
    if solver == "dense":
        # the same torch products as the candidates, so both solvers see bit-identical scores and break
        # ties alike on any machine
        full = full_scores(va, vb, "mse" if distance else "cos").astype(np.float64)
        dense_gain = _gain(distance, full, sq_a[:, None], sq_b[None, :], params.floor, d)
        ra, rb = assign_dense(dense_gain)
        # A dense assignment may pick a pair outside the candidate lists: keep it as an edge too.
        fa, fb, score = _add_edges(fa, fb, score, ra, rb, full[ra, rb], n_b)
    else:
        ra, rb = assign_sparse(fa, fb, gain, n_a, n_b)
    matched = (_gain(distance, score, sq_a[fa], sq_b[fb], params.tau, d) >= 0) if distance else score >= params.tau
    result = _result(a, b, sae_a, sae_b, params, fa, fb, score, ra, rb, matched)
    if cand.a_absmax is not None:  # m.consistency: PW-MCC and MMCS with their baselines (consistency.py)
        stats, result.baselines = consistency(va, vb, cand.a_absmax, cand.b_absmax, params.k, (fa, fb, score), full,
                                              baselines)
        result.stats.update(stats)
    return result


def match_candidates(cand: Candidates, a: SAEWeights, b: SAEWeights, sae_a: str, sae_b: str, params: MatchParams,
                     full=None) -> PairResult:
    """A method whose top-k candidates (both directions) come from elsewhere, e.g. activation_corr from the
    co-firing state: the same assignment as the weight methods. `full()` gives the [n_a, n_b] scores and
    is called only where the dense solver runs (both widths small)."""
    n_a, n_b = len(cand.a2b_index), len(cand.b2a_index)
    fa, fb, score = edges(cand)
    solver = params.solver if params.solver != "auto" else (
        "dense" if n_a * n_b <= DENSE_MAX and full is not None else "sparse")
    if solver == "dense":
        if full is None:
            raise ValueError(f"{params.method}: the dense solver needs the full score matrix")
        scores = full()
        ra, rb = assign_dense(scores - params.floor)
        fa, fb, score = _add_edges(fa, fb, score, ra, rb, scores[ra, rb], n_b)
    else:
        ra, rb = assign_sparse(fa, fb, score - params.floor, n_a, n_b)
    return _result(a, b, sae_a, sae_b, params, fa, fb, score, ra, rb, score >= params.tau)


def _result(a, b, sae_a, sae_b, params, fa, fb, score, ra, rb, matched_edge) -> PairResult:
    """Flag the assigned edges, compute the pair statistics, build the matches table."""
    method, distance = params.method, method_info(params.method).is_distance
    n_a, n_b = len(a.W_dec), len(b.W_dec)
    assigned = np.zeros(len(fa), dtype=bool)
    keys = fa.astype(np.int64) * n_b + fb
    order = np.argsort(keys)
    assigned[order[np.searchsorted(keys[order], ra.astype(np.int64) * n_b + rb)]] = True
    a_score, a_fa, a_fb = score[assigned], fa[assigned], fb[assigned]
    dec_a, dec_b = folded_decoder(a), folded_decoder(b)
    pair_mse = ((dec_a[a_fa].astype(np.float64) - dec_b[a_fb]) ** 2).mean(1)  # float64: no square overflows
    stats = pair_stats(a_score, matched_edge[assigned], a_fa, a_fb, pair_mse, n_a, n_b, params.tau, distance)
    n = len(fa)
    table = pa.table({
        "sae_a": pa.repeat(sae_a, n).dictionary_encode(),
        "feature_a": pa.array(fa, pa.int32()),
        "sae_b": pa.repeat(sae_b, n).dictionary_encode(),
        "feature_b": pa.array(fb, pa.int32()),
        "method": pa.repeat(method, n).dictionary_encode(),
        "score": pa.array(score, pa.float32()),
        "rank": pa.array(_ranks(fa, score, distance), pa.int16()),
        "assigned": pa.array(assigned),
        "rank_b": pa.array(_ranks(fb, score, distance), pa.int16()),
    })
    return PairResult(table.sort_by([("feature_a", "ascending"), ("rank", "ascending")]), stats)


def _add_edges(fa, fb, score, ra, rb, rscore, n_b):
    new = ~np.isin(ra.astype(np.int64) * n_b + rb, fa.astype(np.int64) * n_b + fb)
    if not new.any():
        return fa, fb, score
    return (np.concatenate([fa, ra[new]]), np.concatenate([fb, rb[new]]),
            np.concatenate([score, rscore[new].astype(score.dtype)]))
