"""Feature examples from a token stream: each feature's top activations and a uniform random sample of
the tokens where it fires, with their context (the `examples` table)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from atlas_ingest.cofiring.sparse import to_csr


@dataclass
class TopTokens:
    """The n highest-keyed firing tokens per feature over a stream: a bounded heap per feature, kept
    as [d, n] arrays and merged batch by batch (only entries that beat a feature's current n-th pass)."""

    d: int
    n: int
    key: np.ndarray = field(init=False)
    value: np.ndarray = field(init=False)
    token: np.ndarray = field(init=False)

    def __post_init__(self):
        self.key = np.full((self.d, self.n), -np.inf)
        self.value = np.zeros((self.d, self.n), np.float32)
        self.token = np.full((self.d, self.n), -1, np.int64)

    def push(self, feature: np.ndarray, key: np.ndarray, value: np.ndarray, token: np.ndarray) -> None:
        beat = key > self.key[feature, -1]
        if not beat.any():
            return
        feature, key, value, token = feature[beat], key[beat], value[beat], token[beat]
        touched = np.unique(feature)
        f = np.concatenate([np.repeat(touched, self.n), feature])
        k = np.concatenate([self.key[touched].ravel(), key])
        v = np.concatenate([self.value[touched].ravel(), value])
        t = np.concatenate([self.token[touched].ravel(), token])
        order = np.lexsort((t, -k, f))
        f, k, v, t = f[order], k[order], v[order], t[order]
        start = np.searchsorted(f, touched)
        rank = np.arange(len(f)) - np.repeat(start, np.diff(np.r_[start, len(f)]))
        keep = rank < self.n
        self.key[f[keep], rank[keep]] = k[keep]
        self.value[f[keep], rank[keep]] = v[keep]
        self.token[f[keep], rank[keep]] = t[keep]


class Examples:
    """Top activations and a uniform random sample of firing tokens per feature, from streamed batches.
    The random sample is the n_random firing tokens with the smallest hash of (feature, token): a
    bottom-k sketch, so it needs no second pass and is the same however the stream is batched."""

    def __init__(self, d: int, n_top: int = 8, n_random: int = 3, seed: int = 0):
        self.top, self.rand = TopTokens(d, n_top), TopTokens(d, n_random + n_top)
        self.n_random, self.seed, self.offset = n_random, seed, 0

    def add(self, acts) -> None:
        m = to_csr(acts)
        tok = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) + self.offset
        f = m.indices.astype(np.int64)
        self.top.push(f, m.data.astype(np.float64), m.data.astype(np.float32), tok)
        h = (tok * 0x9E3779B1 + f * 0x85EBCA77 + self.seed) * 0xC2B2AE3D % (2**31 - 1)
        self.rand.push(f, -h.astype(np.float64), m.data.astype(np.float32), tok)
        self.offset += m.shape[0]

    def rows(self, tokens: dict[str, np.ndarray], tokenizer, context: int = 6) -> list[tuple]:
        """(feature, kind, activation, token index, context tokens, highlight position) per example. Tokens
        as their text (`decode` of each: ' the' for byte-level BPE, not 'Ġthe'; WordPiece's '##ing' as is)."""
        docs, ids = tokens["doc"], tokens["token_ids"]
        text: dict[int, str] = {}
        out = []
        for j in range(self.top.d):
            top = [("top", v, t) for v, t in zip(self.top.value[j], self.top.token[j]) if t >= 0]
            chosen = {t for _, _, t in top}
            rand = [("random", v, t) for v, t in zip(self.rand.value[j], self.rand.token[j]) if t >= 0 and t not in chosen]
            for kind, v, t in top + rand[:self.n_random]:
                t = int(t)
                lo, hi = max(0, t - context), min(len(ids), t + context + 1)
                span = [i for i in range(lo, hi) if docs[i] == docs[t]]
                for i in span:
                    if int(ids[i]) not in text:
                        text[int(ids[i])] = tokenizer.decode([int(ids[i])])
                words = [text[int(ids[i])] for i in span]
                out.append((j, kind, float(v), t, words, span.index(t)))
        return out

