"""Correlate job: activation statistics of SAE pairs → correlations, activation_corr matches, pair_stats,
compositions, feature examples, and activation checks of the weight matches (SAE Match).

Each pair is a pure task (`run_corr`): it reads the two SAEs and the stored activations by reference,
writes its tables as Parquet shards and returns their paths; it runs in-process or on Ray, and only
this driver writes DuckDB, one transaction per pair.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas.match.pair import MatchParams, match_candidates
from atlas.store import Atlas, parts, record_run
from ingest.activations import MANIFEST, iter_layer, load_tokens, model_path
from ingest.correlate import Compositions, Examples, Quality, activation_batches, new_state
from ingest.executors import InProcess
from ingest.sources import read_sae
from ingest.tasks import SAERef


@dataclass(frozen=True)
class CorrTask:
    a: SAERef
    b: SAERef
    layer_a: int
    layer_b: int
    activations: str
    max_tokens: int | None
    k: int
    params: MatchParams
    assignments: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    """(method, feature_a, feature_b) of each stored weight-based assignment of the pair, to check."""
    examples_for: tuple[str, ...]
    """SAE ids (a's and/or b's) whose examples this task writes."""

    @property
    def key(self) -> str:
        return f"{self.a.sae_id}__{self.b.sae_id}"


@dataclass
class CorrResult:
    key: str
    shards: dict[str, str]
    stats: dict
    quality: dict[str, dict]
    n_compositions: int
    seconds: float
    error_bound: float = 0.0
    """Θ of the co-firing cap policy (ingest.correlate): 0.0 = every statistic exact."""


@dataclass
class CorrelateSummary:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    compositions: dict[str, int] = field(default_factory=dict)
    examples: int = 0
    seconds: float = 0.0
    error_bound: float = 0.0
    """Largest Θ over the pairs: 0.0 when no pair hit the co-firing cap."""


def _batch(d_sae: int) -> int:
    """Tokens per streamed batch: the dense encoder output stays near 128 MB at any width."""
    return max(256, min(8192, 2**25 // max(d_sae, 1)))


def _stream(task: CorrTask, ra, rb):
    """(acts_a, acts_b, x_b) per token batch over the pair's tokens; nothing is kept between batches."""
    batch = _batch(max(ra.meta.d_sae, rb.meta.d_sae))
    folder = Path(task.activations)
    xs_a = iter_layer(folder, task.layer_a, batch, task.max_tokens)
    xs_b = iter_layer(folder, task.layer_b, batch, task.max_tokens)
    for xa, xb in zip(xs_a, xs_b, strict=True):
        (A,), (B,) = activation_batches(ra, [xa]), activation_batches(rb, [xb])
        yield A, B, xb


def _unit_rows(w: np.ndarray) -> np.ndarray:
    return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)


def run_corr(task: CorrTask, out_dir: str) -> CorrResult:
    """Everything about one pair's activations, written as shards under out_dir. One streamed pass
    builds the co-firing state, the examples and the weight matches' checks; a second one counts the
    AND/OR candidates' joint firing (only for pairs across layers)."""
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    a, b = task.a.sae_id, task.b.sae_id
    ra = read_sae(task.a.source, fmt=task.a.fmt, sae_id=a, layer=task.layer_a)
    rb = read_sae(task.b.source, fmt=task.b.fmt, sae_id=b, layer=task.layer_b)
    state = new_state(ra.meta.d_sae, rb.meta.d_sae)
    ex = {sid: Examples(rec.meta.d_sae) for sid, rec in ((a, ra), (b, rb)) if sid in task.examples_for}
    quality = {method: Quality(rb, np.array(f_a, np.int64), np.array(f_b, np.int64))
               for method, f_a, f_b in task.assignments}
    for A, B, xb in _stream(task, ra, rb):
        state.add(A, B)
        for sid, acts in ((a, A), (b, B)):
            if sid in ex:
                ex[sid].add(acts)
        for q in quality.values():
            q.add(A, xb)
    state.finish()
    if state.n == 0:
        raise ValueError(f"{task.activations}: no tokens to correlate {a} and {b} over")
    cand = state.topk(task.k)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = {}

    def write(name, table):
        path = out / f"{task.key}.{name}.parquet"
        if name in parts.PART_TABLES:  # a finished table file (with its reverse file): published by a rename
            table = parts.conform(name, table, run_id=out.name)  # out is atlas.files/results/<run_id>
            reverse = parts.reverse_rows(task.params.method, table) if name == "matches" else None
            if reverse is not None:
                parts.write_file(path.with_name(f"{task.key}.{name}.by_b.parquet"), reverse)
        parts.write_file(path, table)
        shards[name] = str(path)

    k = cand.a2b_index.shape[1]
    fa, fb = np.repeat(np.arange(state.d_a), k), cand.a2b_index.ravel()
    st = state.stats(fa, fb)
    write("correlations", pa.table({
        "sae_a": pa.repeat(a, len(fa)), "feature_a": pa.array(fa, pa.int32()), "sae_b": pa.repeat(b, len(fa)),
        "feature_b": pa.array(fb, pa.int32()), "pearson": pa.array(st["pearson"], pa.float32()),
        "p_b_given_a": pa.array(st["p_b_given_a"], pa.float32()),
        "jaccard": pa.array(st["jaccard"], pa.float32()), "n_tokens": pa.repeat(state.n, len(fa)).cast(pa.int64())}))
    result = match_candidates(cand, ra.weights, rb.weights, a, b, task.params, full=lambda: state.dense()["pearson"])
    write("matches", result.matches)
    comps = []
    if task.layer_a < task.layer_b:
        plan = Compositions.plan(cand, state)
        for A, B, _ in _stream(task, ra, rb):
            plan.add(A, B)
        par = np.maximum(plan.parents, 0)
        dec_cos = np.einsum("jpd,jd->jp", _unit_rows(ra.weights.W_dec)[par], _unit_rows(rb.weights.W_dec))
        comps = plan.find(cand.b2a_score[:, :par.shape[1]], dec_cos)
    write("compositions", pa.table({
        "sae_b": pa.repeat(b, len(comps)), "feature_b": pa.array([c[0] for c in comps], pa.int32()),
        "kind": pa.array([c[1] for c in comps], pa.string()), "parents": pa.array([c[2] for c in comps], pa.list_(pa.int32())),
        "sae_a": pa.repeat(a, len(comps)), "score": pa.array([c[3] for c in comps], pa.float32())}))
    if ex:
        manifest = json.loads((Path(task.activations) / MANIFEST).read_text())
        tokenizer = AutoTokenizer.from_pretrained(model_path(manifest["config"]["model"]))
        tokens = {key: v[:task.max_tokens] for key, v in load_tokens(Path(task.activations)).items()}
        rows = [(sid, *r) for sid, e in ex.items() for r in e.rows(tokens, tokenizer)]
        write("examples", pa.table({
            "sae_id": pa.array([r[0] for r in rows], pa.string()), "feature": pa.array([r[1] for r in rows], pa.int32()),
            "kind": pa.array([r[2] for r in rows], pa.string()), "activation": pa.array([r[3] for r in rows], pa.float32()),
            "token": pa.array([r[4] for r in rows], pa.int32()), "tokens": pa.array([r[5] for r in rows], pa.list_(pa.string())),
            "highlight": pa.array([r[6] for r in rows], pa.int32()),
            "dataset": pa.repeat(manifest["config"]["corpus"], len(rows)).cast(pa.string())}))
    stats = dict(result.stats, params_hash=task.params.hash(task.a.sha256, task.b.sha256))
    return CorrResult(task.key, shards, stats, {m: q.result(state) for m, q in quality.items()}, len(comps),
                      time.perf_counter() - t0, state.error_bound)


def correlate(atlas: Atlas, pairs: list[tuple[str, str]], activations: Path, k: int = 16,
              params: MatchParams | None = None, with_examples: bool = True, progress=None,
              max_tokens: int | None = None, executor=None) -> CorrelateSummary:
    """Activation statistics for each (sae_a, sae_b) over the tokens stored in `activations` (the first
    `max_tokens` of them, when given), on `executor` (in-process by default, or Ray)."""
    executor = executor or InProcess()
    params = params or MatchParams(method="activation_corr", floor=0.1)
    dataset = json.loads((Path(activations) / MANIFEST).read_text())["config"]["corpus"]
    summary = CorrelateSummary()
    t0 = time.perf_counter()
    with atlas.write() as w, record_run(w, "correlate", {"pairs": pairs, "activations": str(activations), "k": k,
                                                          "max_tokens": max_tokens}) as run_id:
        rows = {r[0]: r for r in w.con.execute("SELECT sae_id, source, format, sha256, layer FROM saes").fetchall()}
        have_examples = {r[0] for r in w.con.execute("SELECT DISTINCT sae_id FROM examples WHERE dataset = ?",
                                                     [dataset]).fetchall()}
        tasks, claimed = [], set(have_examples)
        for a, b in pairs:
            for s in (a, b):
                if s not in rows:
                    raise KeyError(f"unknown SAE {s!r}: see `atlas saes`")
            assignments = []
            for method, in w.con.execute("SELECT method FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method <> "
                                         "'activation_corr' ORDER BY method", [a, b]).fetchall():
                ab = w.pair_rows("matches", a, b, method, "SELECT feature_a, feature_b FROM rows WHERE assigned "
                                                                      "ORDER BY feature_a")
                assignments.append((method, tuple(x for x, _ in ab), tuple(y for _, y in ab)))
            wanted = tuple(s for s in (a, b) if with_examples and s not in claimed)
            claimed.update(wanted)
            tasks.append(CorrTask(SAERef(*rows[a][:4]), SAERef(*rows[b][:4]), rows[a][4], rows[b][4], str(activations),
                                  max_tokens, k, params, tuple(assignments), wanted))
        out_dir = atlas.dir / "results" / run_id
        by_key = {t.key: t for t in tasks}
        for result in executor.map(run_corr, tasks, str(out_dir)):
            task = by_key[result.key]
            _commit(w, task, result, run_id, summary)
            if progress:
                progress(task.a.sae_id, task.b.sae_id)
        shutil.rmtree(out_dir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _commit(w, task: CorrTask, result: CorrResult, run_id: str, summary: CorrelateSummary) -> None:
    a, b = task.a.sae_id, task.b.sae_id
    w.replace_activation_pair(a, b, "activation_corr", ((n, Path(p)) for n, p in result.shards.items()),
                              result.stats, {m: {"matching_score": q["matching_score"],
                                                 "explained_variance": q["explained_variance"]}
                                             for m, q in result.quality.items()}, run_id)
    for path in result.shards.values():  # the ones not renamed into table files
        Path(path).unlink(missing_ok=True)
    summary.pairs.append((a, b))
    summary.compositions[f"{a}->{b}"] = result.n_compositions
    summary.examples += len(task.examples_for)
    summary.error_bound = max(summary.error_bound, result.error_bound)
