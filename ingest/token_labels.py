"""Labels that tell features apart: the tokens a feature fires on far more often than the corpus has them.

A feature's raw top tokens are often the corpus's commonest ones (on MiniLM every feature of a lineage fires
hardest on `(` or `"`), so they do not distinguish it. Here each token t a feature f fires on gets its *lift*,

    lift(f, t) = P(t | f fires) / P(t) = (c(f, t) / n_f) / (N_t / N),

with c(f, t) the tokens of type t where f fires, n_f all tokens where f fires, N_t the corpus's tokens of type t
and N the corpus size. Tokens with enough support (c ≥ MIN_COUNT and ≥ MIN_SHARE of n_f) and lift ≥ MIN_LIFT
make the label, best lift first: `“def” ×41, “class” ×12`. A feature that fires on no token type much more
than the corpus does (a feature of context, not of tokens) is labelled by the context of its top activation:
`context “the [city] of”`. docs/design.md, Labels.
"""

from __future__ import annotations

import numpy as np
import torch

MIN_COUNT = 3
"""Firings on a token type before its lift counts (one or two firings on a rare token give any lift)."""
MIN_SHARE = 0.02
"""... and at least this share of the feature's firings."""
MIN_LIFT = 2.0
"""Below this no token type tells the feature apart: label it by context."""
TOKENS = 2
"""Token types in a label."""
CONTEXT = (3, 2)
"""Tokens before and after the top activation in a context label."""


def firing_counts(encode, x: torch.Tensor, token_ids: np.ndarray, d_sae: int, chunk: int = 8192):
    """Per (feature, token type) the number of tokens where the feature fires, and each feature's firing count,
    top activation and its position. `encode(x [t, d]) -> [t, d_sae]`; x is read `chunk` tokens at a time."""
    keys, counts = [], []
    n_f = np.zeros(d_sae, np.int64)
    top = np.zeros(d_sae, np.float32)
    at = np.full(d_sae, -1, np.int64)
    vocab = int(token_ids.max()) + 1 if len(token_ids) else 1
    for start in range(0, len(x), chunk):
        acts = encode(x[start:start + chunk]).numpy()
        rows, feats = np.nonzero(acts > 0)
        k, c = np.unique(feats.astype(np.int64) * vocab + token_ids[start + rows], return_counts=True)
        keys.append(k)
        counts.append(c)
        n_f += np.bincount(feats, minlength=d_sae)
        best = acts.argmax(0)
        value = acts[best, np.arange(d_sae)]
        better = value > top
        top[better], at[better] = value[better], start + best[better]
    if keys:
        k, inv = np.unique(np.concatenate(keys), return_inverse=True)
        c = np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64)
    else:
        k, c = np.zeros(0, np.int64), np.zeros(0, np.int64)
    return k // vocab, k % vocab, c, n_f, top, at


def lift_labels(features: np.ndarray, tokens: np.ndarray, counts: np.ndarray, n_f: np.ndarray, top_at: np.ndarray,
                token_ids: np.ndarray, doc: np.ndarray, words) -> dict[int, str]:
    """{feature: label} for every feature that fires (firing_counts' output; `words(ids) -> list[str]`, the
    tokenizer's tokens). Silent features get no label."""
    corpus = np.bincount(token_ids, minlength=int(tokens.max(initial=0)) + 1).astype(np.float64)
    p_t = corpus[tokens] / max(len(token_ids), 1)
    share = counts / np.maximum(n_f[features], 1)
    lift = share / np.maximum(p_t, 1e-12)
    ok = (counts >= MIN_COUNT) & (share >= MIN_SHARE) & (lift >= MIN_LIFT)
    order = np.lexsort((-lift, features))  # by feature, best lift first
    best: dict[int, list[tuple[int, float]]] = {}
    for i in order[ok[order]]:
        f = int(features[i])
        if len(best.setdefault(f, [])) < TOKENS:
            best[f].append((int(tokens[i]), float(lift[i])))
    out = {}
    for f in np.nonzero(n_f > 0)[0].tolist():
        if f in best:
            names = words([t for t, _ in best[f]])
            out[f] = ", ".join(f"“{w}” ×{lf:.0f}" if lf >= 10 else f"“{w}” ×{lf:.1f}" for w, (_, lf) in zip(names, best[f]))
        elif top_at[f] >= 0:
            out[f] = f"context “{context(int(top_at[f]), token_ids, doc, words)}”"
    return out


def context(t: int, token_ids: np.ndarray, doc: np.ndarray, words) -> str:
    """The tokens around position t of its document, the token at t in [brackets], WordPiece pieces joined."""
    before, after = CONTEXT
    span = [i for i in range(max(0, t - before), min(len(token_ids), t + after + 1)) if doc[i] == doc[t]]
    toks = words([int(token_ids[i]) for i in span])
    text = " ".join(f"[{w}]" if i == t else w for i, w in zip(span, toks))
    return text.replace(" ##", "").replace("[##", "[")
