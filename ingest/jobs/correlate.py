"""Correlate job: activation statistics of SAE pairs → correlations, activation_corr matches, pair_stats,
compositions, feature examples, and activation checks of the weight matches (SAE Match).

Each SAE is encoded on its own input hook (a transcoder on its input, checked in its output space). A task
(`run_corr`) is one pair, or a whole stack in one pass (every SAE encoded once per batch, every pair's
statistics updated from the same batch, from stored activations or a live model run): it reads the SAEs
and activations by reference, writes its tables as Parquet shards and returns their paths; it runs
in-process or on Ray, and only this driver writes DuckDB, one transaction per pair.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from atlas.encode import encode_record
from atlas.index import unit_rows
from atlas.match.pair import MatchParams, match_candidates
from atlas.queries.common import require_saes
from atlas.store import Atlas, parts, record_run
from atlas_ingest.activations import ActivationConfig, iter_hooks, load_tokens, model_batches, read_manifest, stored_hooks
from atlas_ingest.cofiring import new_state
from atlas_ingest.compositions import Compositions
from atlas_ingest.examples import Examples
from atlas_ingest.executors import InProcess
from atlas_ingest.quality import Quality
from atlas_ingest.sources import load_stored
from atlas_ingest.tasks import SAERef


@dataclass(frozen=True)
class Side:
    """One SAE as the correlate job reads it: encoded on its input hook; its reconstructions compared
    at `hook_out` (its own hook for an SAE, the output hook for a transcoder)."""

    ref: SAERef
    hook: str
    hook_out: str
    layer: int


@dataclass(frozen=True)
class CorrTask:
    a: Side
    b: Side
    max_tokens: int | None
    k: int
    params: MatchParams
    assignments: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    """(method, feature_a, feature_b) of each stored weight-based assignment of the pair, to check."""
    examples_for: tuple[str, ...]
    """SAE ids (a's and/or b's) whose examples this task writes."""

    @property
    def key(self) -> str:
        return f"{self.a.ref.sae_id}__{self.b.ref.sae_id}"


@dataclass(frozen=True)
class StackTask:
    """Pairs correlated together in one pass over `source`: a folder of stored activations, or an
    ActivationConfig whose model runs here (nothing written to disk). Each SAE is encoded once per batch."""

    pairs: tuple[CorrTask, ...]
    source: str | ActivationConfig

    @property
    def key(self) -> str:
        return self.pairs[0].key if len(self.pairs) == 1 else f"stack-{len(self.pairs)}-{self.pairs[0].key}"


@dataclass
class CorrResult:
    key: str
    shards: dict[str, str]
    stats: dict
    quality: dict[str, dict]
    n_compositions: int
    error_bound: float = 0.0
    """Θ of the co-firing cap policy (atlas_ingest.cofiring.sparse): 0.0 = every statistic exact."""


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


def _stream(task: StackTask, hooks: list[str], batch: int, tokens: dict | None = None):
    """{hook: [t, d] float32} per batch over the source's tokens; with `tokens`, collects token_ids, doc
    and pos there (live model runs: the stored ones are read from the store)."""
    if isinstance(task.source, ActivationConfig):
        for b in model_batches(task.source):
            if tokens is not None:
                for k in ("token_ids", "doc", "pos"):
                    tokens.setdefault(k, []).append(b[k].numpy())
            yield b
        return
    yield from iter_hooks(Path(task.source), hooks, batch, task.pairs[0].max_tokens)


def run_corr(task: StackTask, out_dir: str) -> list[CorrResult]:
    """One task on an executor (a pair, or a stack): everything about each pair's activations, written as
    shards under out_dir. One streamed pass encodes every SAE on its own hook once per batch and feeds every
    pair's co-firing state, the examples and the weight matches' checks; a second one counts the AND/OR
    candidates' joint firing (only for pairs across layers)."""
    sides = {s.ref.sae_id: s for t in task.pairs for s in (t.a, t.b)}
    recs = {sid: read_side(s) for sid, s in sides.items()}
    states = {t.key: new_state(recs[t.a.ref.sae_id].meta.d_sae, recs[t.b.ref.sae_id].meta.d_sae) for t in task.pairs}
    wanted = {sid for t in task.pairs for sid in t.examples_for}
    ex = {sid: Examples(recs[sid].meta.d_sae) for sid in wanted}
    quality = {t.key: {m: Quality(recs[t.b.ref.sae_id], np.array(f_a, np.int64), np.array(f_b, np.int64))
                       for m, f_a, f_b in t.assignments} for t in task.pairs}
    hooks = list(dict.fromkeys([s.hook for s in sides.values()] +
                               [t.b.hook_out for t in task.pairs if t.assignments]))
    batch = _batch(max(r.meta.d_sae for r in recs.values()))
    live_tokens: dict[str, list] = {}
    for xs in _stream(task, hooks, batch, live_tokens):
        acts = {sid: encode_record(recs[sid], xs[s.hook]) for sid, s in sides.items()}
        for t in task.pairs:
            A, B = acts[t.a.ref.sae_id], acts[t.b.ref.sae_id]
            states[t.key].add(A, B)
            for q in quality[t.key].values():
                q.add(A, xs[t.b.hook_out])
        for sid, e in ex.items():
            e.add(acts[sid])
    for t in task.pairs:
        states[t.key].finish()
        if states[t.key].n == 0:
            raise ValueError(f"{_name(task.source)}: no tokens to correlate {t.a.ref.sae_id} and {t.b.ref.sae_id} over")
    cands = {t.key: states[t.key].topk(t.k) for t in task.pairs}
    across = [t for t in task.pairs if t.a.layer < t.b.layer]
    plans = {t.key: Compositions.plan(cands[t.key], states[t.key]) for t in across}
    if across:
        need = {s.ref.sae_id: s for t in across for s in (t.a, t.b)}
        for xs in _stream(task, list(dict.fromkeys(s.hook for s in need.values())), batch):
            acts = {sid: encode_record(recs[sid], xs[s.hook]) for sid, s in need.items()}
            for t in across:
                plans[t.key].add(acts[t.a.ref.sae_id], acts[t.b.ref.sae_id])
    tokens, tokenizer, dataset = _tokens(task, live_tokens) if ex else (None, None, None)
    return [_write_pair(t, recs, states[t.key], cands[t.key], plans.get(t.key), {sid: ex[sid] for sid in t.examples_for},
                        quality[t.key], tokens, tokenizer, dataset, Path(out_dir)) for t in task.pairs]


def read_side(s: Side):
    """The SAE's weights (hash-checked) with the hooks the atlas stores for it (a --hook given at ingest included),
    not the ones its file names."""
    return load_stored(s.ref.sae_id, s.ref.source, s.ref.fmt, s.ref.sha256, layer=s.layer, hook=s.hook,
                       hook_out=s.hook_out if s.hook_out != s.hook else None)


def _name(source) -> str:
    return f"model {source.model} on {source.corpus}" if isinstance(source, ActivationConfig) else str(source)


def _tokens(task: StackTask, live: dict[str, list]):
    """(token_ids/doc/pos over the correlated tokens, the tokenizer, the dataset name) for examples."""
    from atlas_ingest.models import tokenizer

    if isinstance(task.source, ActivationConfig):
        cfg = task.source
        tokens = {k: np.concatenate(v) for k, v in live.items()}
    else:
        cfg = ActivationConfig(**{k: v for k, v in read_manifest(Path(task.source))["config"].items()
                                  if k in ActivationConfig.__dataclass_fields__})
        tokens = {k: v[:task.pairs[0].max_tokens] for k, v in load_tokens(Path(task.source)).items()}
    return tokens, tokenizer(cfg.model), cfg.corpus


def _write_pair(task: CorrTask, recs, state, cand, plan, ex, quality, tokens, tokenizer, dataset,
                out: Path) -> CorrResult:
    a, b = task.a.ref.sae_id, task.b.ref.sae_id
    ra, rb = recs[a], recs[b]
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
    if plan is not None:
        par = np.maximum(plan.parents, 0)
        wa, wb = ra.weights.W_dec, rb.weights.W_dec  # in their own dtype, not cast to float32 first
        dec_cos = np.einsum("jpd,jd->jp", unit_rows(wa, wa.dtype)[par], unit_rows(wb, wb.dtype))
        comps = plan.find(cand.b2a_score[:, :par.shape[1]], dec_cos)
    write("compositions", pa.table({
        "sae_b": pa.repeat(b, len(comps)), "feature_b": pa.array([c[0] for c in comps], pa.int32()),
        "kind": pa.array([c[1] for c in comps], pa.string()), "parents": pa.array([c[2] for c in comps], pa.list_(pa.int32())),
        "sae_a": pa.repeat(a, len(comps)), "score": pa.array([c[3] for c in comps], pa.float32())}))
    if ex:
        rows = [(sid, *r) for sid, e in ex.items() for r in e.rows(tokens, tokenizer)]
        write("examples", pa.table({
            "sae_id": pa.array([r[0] for r in rows], pa.string()), "feature": pa.array([r[1] for r in rows], pa.int32()),
            "kind": pa.array([r[2] for r in rows], pa.string()), "activation": pa.array([r[3] for r in rows], pa.float32()),
            "token": pa.array([r[4] for r in rows], pa.int32()), "tokens": pa.array([r[5] for r in rows], pa.list_(pa.string())),
            "highlight": pa.array([r[6] for r in rows], pa.int32()),
            "dataset": pa.repeat(dataset, len(rows)).cast(pa.string())}))
    stats = dict(result.stats, params_hash=task.params.hash(task.a.ref.sha256, task.b.ref.sha256))
    return CorrResult(task.key, shards, stats, {m: q.result(state) for m, q in quality.items()}, len(comps),
                      state.error_bound)


def _hook_check(source):
    """A function (sae_id, hook) that raises one line naming both where the source cannot give that hook:
    a store's stored hooks; a live model's own hooks (on the model the run then uses: atlas_ingest.models holds it)."""
    if isinstance(source, ActivationConfig):
        from atlas_ingest import models
        from atlas_ingest.hooks import HookedRunner, HookError

        runner = HookedRunner(models.load(source.model).model)

        def check(sid, hook):
            try:
                runner.site(hook)
            except HookError as e:
                raise ValueError(f"SAE {sid} reads hook {hook}, which model {source.model} lacks: {e}") from None
        return check
    have = list(stored_hooks(read_manifest(Path(source))))

    def check(sid, hook):
        if hook not in have:
            raise ValueError(f"SAE {sid} reads hook {hook}, which {source} does not store (stored: {', '.join(have)})")
    return check


def correlate(atlas: Atlas, pairs: list[tuple[str, str]], activations: Path | ActivationConfig, k: int = 16,
              params: MatchParams | None = None, with_examples: bool = True, progress=None,
              max_tokens: int | None = None, executor=None, one_pass: bool = False) -> CorrelateSummary:
    """Activation statistics for each (sae_a, sae_b) over the tokens stored in `activations` (the first
    `max_tokens` of them, when given) or over a live model run (an ActivationConfig; always one pass),
    on `executor` (in-process by default, or Ray). Each SAE is encoded on its own input hook; an SAE whose
    hook the source lacks is refused before any work. `one_pass`: all pairs in one task, each SAE encoded
    once per batch (else one task per pair)."""
    executor = executor or InProcess()
    params = params or MatchParams(method="activation_corr", floor=0.1)
    live = isinstance(activations, ActivationConfig)
    source = activations if live else str(activations)
    dataset = activations.corpus if live else read_manifest(Path(activations))["config"]["corpus"]
    have = _hook_check(source)
    summary = CorrelateSummary()
    t0 = time.perf_counter()
    with atlas.write() as w, record_run(w, "correlate", {"pairs": pairs, "activations": _name(source), "k": k,
                                                          "max_tokens": max_tokens}) as run_id:
        rows = {r[0]: r for r in w.con.execute(
            "SELECT sae_id, source, format, sha256, layer, hook, coalesce(hook_out, hook) FROM saes").fetchall()}
        have_examples = {r[0] for r in w.con.execute("SELECT DISTINCT sae_id FROM examples WHERE dataset = ?",
                                                     [dataset]).fetchall()}
        tasks, claimed = [], set(have_examples)
        for a, b in pairs:
            require_saes(rows, (a, b))
            assignments = []
            for method, in w.con.execute("SELECT method FROM pair_stats WHERE sae_a = ? AND sae_b = ? AND method <> "
                                         "'activation_corr' ORDER BY method", [a, b]).fetchall():
                ab = w.pair_rows("matches", a, b, method, "SELECT feature_a, feature_b FROM rows WHERE assigned "
                                                                      "ORDER BY feature_a")
                assignments.append((method, tuple(x for x, _ in ab), tuple(y for _, y in ab)))
            sa, sb = (Side(SAERef(*rows[s][:4]), rows[s][5], rows[s][6], rows[s][4]) for s in (a, b))
            for sid, hook in [(a, sa.hook), (b, sb.hook)] + ([(b, sb.hook_out)] if assignments else []):
                have(sid, hook)
            wanted = tuple(s for s in (a, b) if with_examples and s not in claimed)
            claimed.update(wanted)
            tasks.append(CorrTask(sa, sb, None if live else max_tokens, k, params, tuple(assignments), wanted))
        if live:  # the model captures exactly the hooks its SAEs read (model_batches refuses one it lacks)
            source = replace(activations, layers=[], hooks=list(dict.fromkeys(
                h for t in tasks for h in (t.a.hook, t.b.hook) + ((t.b.hook_out,) if t.assignments else ()))))
        stacks = [StackTask(tuple(tasks), source)] if (one_pass or live) and tasks else \
            [StackTask((t,), source) for t in tasks]
        out_dir = atlas.dir / "results" / run_id
        by_key = {t.key: t for t in tasks}
        for results in executor.map(run_corr, stacks, str(out_dir)):
            for result in results:
                task = by_key[result.key]
                _commit(w, task, result, run_id, summary)
                if progress:
                    progress(task.a.ref.sae_id, task.b.ref.sae_id)
        shutil.rmtree(out_dir, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _commit(w, task: CorrTask, result: CorrResult, run_id: str, summary: CorrelateSummary) -> None:
    a, b = task.a.ref.sae_id, task.b.ref.sae_id
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
