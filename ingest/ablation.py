"""Ablating one SAE feature in a running model and reading what happens to later features (docs/design.md,
Edges under ablation).

On held-out windows, feature a of SAE A fires at some tokens with activation act_a. Ablating it subtracts
its decoder contribution act_a · W_dec(A)[a] from the activation at A's hook at exactly those tokens; the
model runs on (atlas_ingest.hooks edits and captures by hook name) to each later SAE's hook, where that SAE
encodes the changed activation. A child b's relative drop is 1 − Σ ablated / Σ clean of b's activation over
the tokens where a fires: 1 means b vanished with a, 0 untouched, negative b rose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from atlas.encode import encode_record
from atlas.sae import SAERecord

from .hooks import HookedRunner, subtract


@dataclass
class Windows:
    """Token windows the model runs on: `inputs` (input_ids [n, L], attention_mask) and `keep` [n, L], the
    positions whose activations count ([CLS], [SEP], BOS and padding do not)."""

    inputs: dict[str, torch.Tensor]
    keep: torch.Tensor

    def __len__(self) -> int:
        return len(self.keep)

    def rows(self, idx) -> "Windows":
        return Windows({k: v[idx] for k, v in self.inputs.items()}, self.keep[idx])


def heldout_windows(model: str, corpus: str, skip_tokens: int, n_windows: int, window: int = 126) -> Windows:
    """`n_windows` windows of the corpus after its first `skip_tokens` tokens (those the SAEs were trained and
    correlated on, in `atlas minilm`'s order), framed for the model ([CLS]/[SEP] or BOS; atlas_ingest.models)."""
    from . import models
    from .activations import frame_windows, windows
    from .corpora import load

    lm = models.load(model)
    docs = load(corpus)
    chunks, seen = [], 0
    for _, _, chunk in windows(lm.tokenizer, docs, window, 0):
        if seen >= skip_tokens:
            chunks.append(chunk)
            if len(chunks) == n_windows:
                break
        seen += len(chunk)
    if not chunks:
        raise ValueError(f"corpus {corpus!r} has no tokens after the first {skip_tokens:,} (lower --skip-tokens)")
    ids, mask, keep = frame_windows(lm, chunks)
    inputs = {"input_ids": ids, "attention_mask": mask} if not lm.causal else {"input_ids": ids}
    return Windows(inputs, keep)


def load_model(model: str) -> torch.nn.Module:
    """The model `name` for HookedRunner (atlas_ingest.models.load: one load per process)."""
    from . import models

    return models.load(model).model


@dataclass
class Checked:
    """One (a → b) check: tokens where a fired, b's summed activation there clean and with a ablated."""

    n_tokens: int
    clean: float
    ablated: float

    @property
    def drop(self) -> float | None:
        """1 − ablated / clean; None where b is silent on those tokens (nothing to drop: untested)."""
        return 1.0 - self.ablated / self.clean if self.clean > 0 else None


class Ablator:
    """Clean activations of a set of SAEs over windows (one pass), then feature-by-feature ablations."""

    def __init__(self, runner: HookedRunner, windows: Windows, saes: dict[str, SAERecord], batch: int = 16,
                 max_windows: int = 2, progress=None):
        self.runner, self.windows, self.saes = runner, windows, saes
        self.batch, self.max_windows = batch, max_windows
        self.length = windows.keep.shape[1]
        runner.check({r.meta.hook for r in saes.values()})
        self.acts = self._clean(progress)

    def _clean(self, progress=None) -> dict[str, sp.csc_matrix]:
        """Each SAE's activations [n · L, d_sae] (row = window · L + position; zero where not kept), sparse;
        `progress(windows done, windows)` after each batch."""
        hooks = sorted({r.meta.hook for r in self.saes.values()})
        parts: dict[str, list[sp.csr_matrix]] = {s: [] for s in self.saes}
        for start in range(0, len(self.windows), self.batch):
            if progress:
                progress(start, len(self.windows))
            w = self.windows.rows(slice(start, start + self.batch))
            got = {h: x.float().cpu() for h, x in self.runner.run(w.inputs, capture=hooks).items()}
            for sid, rec in self.saes.items():
                x = got[rec.meta.hook]
                acts = encode_record(rec, x.reshape(-1, x.shape[-1])) * w.keep.reshape(-1, 1)
                parts[sid].append(sp.csr_matrix(acts.numpy()))
        if progress:
            progress(len(self.windows), len(self.windows))
        return {s: sp.vstack(p).tocsc() for s, p in parts.items()}

    def column(self, sae_id: str, feature: int) -> np.ndarray:
        """Clean activations of one feature [n, L]."""
        return self.acts[sae_id][:, feature].toarray().reshape(len(self.windows), self.length)

    def fires(self, sae_id: str) -> np.ndarray:
        """Tokens each feature of the SAE fires on [d_sae]."""
        return self.acts[sae_id].getnnz(axis=0)  # activations are >= 0: stored entries are firings

    def _rows(self, col: np.ndarray) -> np.ndarray:
        """The windows an ablation runs on: the first `max_windows` where the feature fires."""
        return np.flatnonzero((col > 0).any(axis=1))[: self.max_windows]

    def tokens(self, sae_id: str, feature: int) -> np.ndarray:
        """Flat token rows (window · L + position) where an ablation of the feature acts."""
        col = self.column(sae_id, feature)
        rows = self._rows(col)
        return (rows[:, None] * self.length + np.arange(self.length)[None, :])[col[rows] > 0]

    def ablate(self, sae_a: str, feature_a: int, targets: list[tuple[str, int]]) -> list[Checked]:
        """Ablate (sae_a, feature_a) on the windows where it fires (the first `max_windows`) and check each
        target (sae_b, feature_b) at the tokens where it fired."""
        col = self.column(sae_a, feature_a)
        rows = self._rows(col)
        if not len(rows) or not targets:
            return [Checked(0, 0.0, 0.0) for _ in targets]
        coef = torch.from_numpy(col[rows].astype(np.float32))
        fired = coef > 0
        direction = torch.from_numpy(np.asarray(self.saes[sae_a].weights.W_dec[feature_a], np.float32))
        # subtract(v, weights) subtracts weights[..., None] * v: here act_a at each token, 0 where a is silent
        edit = {self.saes[sae_a].meta.hook: subtract(direction, coef)}
        hooks = sorted({self.saes[s].meta.hook for s, _ in targets})
        got = {h: x.float().cpu() for h, x in
               self.runner.run(self.windows.rows(torch.from_numpy(rows)).inputs, capture=hooks, edit=edit).items()}
        flat = (rows[:, None] * self.length + np.arange(self.length)[None, :])[fired.numpy()]
        out, encoded = [], {}
        for sae_b, feature_b in targets:
            if sae_b not in encoded:
                encoded[sae_b] = encode_record(self.saes[sae_b], got[self.saes[sae_b].meta.hook][fired])
            clean = float(self.acts[sae_b][flat, feature_b].sum())
            out.append(Checked(int(fired.sum()), clean, float(encoded[sae_b][:, feature_b].sum())))
        return out


@torch.no_grad()
def steering_rise(runner: HookedRunner, windows: Windows, saes: dict[str, SAERecord],
                  members: list[tuple[str, int, np.ndarray]], alpha: float) -> dict[str, list[float]]:
    """Mean activation of each chain member (sae_id, feature, W_dec row) over the windows' tokens: clean, with
    alpha · unit direction added at the first member's hook only, and at every member's hook (the steering
    set). SAE feature flow's comparison: a whole chain against its first layer alone."""
    hooks = [saes[s].meta.hook for s, _, _ in members]
    unit = [torch.from_numpy(np.asarray(d, np.float32) / max(float(np.linalg.norm(d)), 1e-12)) for _, _, d in members]

    def add(v):
        return lambda x: x + alpha * v

    runs = {"clean": {}, "first": {hooks[0]: add(unit[0])},
            "chain": {h: add(v) for h, v in zip(hooks, unit)}}
    out = {}
    for name, edit in runs.items():
        got = runner.run(windows.inputs, capture=hooks, edit=edit)
        out[name] = [float(encode_record(saes[s], got[h][windows.keep])[:, f].mean()) for (s, f, _), h in zip(members, hooks)]
    return out
