"""Activation statistics of SAE pairs over the same tokens, streamed and sparse.

For a pair (a, b) the features' activations are mostly zero, so per token batch only these sums are
accumulated: n, Σa, Σa², Σb, Σb², AᵀB and the co-firing counts 1[A>0]ᵀ1[B>0], both as sparse × dense
products that touch only a's non-zeros. Pearson r, P(b fires | a fires) and the Jaccard similarity of
firing sets follow exactly; no tokens × features matrix is ever dense beyond one batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from atlas.encode import decode, encode
from atlas.sae import SAERecord

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def activation_batches(rec: SAERecord, x: torch.Tensor, batch: int = 8192):
    """Feature activations [t, d_sae] of `rec`, one token batch at a time."""
    m = rec.meta
    for s in range(0, len(x), batch):
        yield encode(rec.weights, x[s:s + batch], m.arch, m.k, m.extra.get("apply_b_dec_to_input", True))


@dataclass
class PairActivations:
    n: int
    pearson: np.ndarray  # [d_a, d_b]
    cofire: np.ndarray  # [d_a, d_b] tokens where both fire
    fire_a: np.ndarray  # [d_a]
    fire_b: np.ndarray  # [d_b]
    acts_a: sp.csc_matrix | None  # [T, d_a] every activation, for compositions and examples
    acts_b: sp.csc_matrix | None

    def p_b_given_a(self) -> np.ndarray:
        return self.cofire / np.maximum(self.fire_a[:, None], 1)

    def jaccard(self) -> np.ndarray:
        return self.cofire / np.maximum(self.fire_a[:, None] + self.fire_b[None, :] - self.cofire, 1)


def _csc(t: torch.Tensor) -> tuple[torch.Tensor, sp.csc_matrix]:
    """[T, d] dense activations as torch CSR of the transpose ([d, T], rows = features) and the same
    memory as a scipy CSC matrix [T, d]."""
    csr = t.T.contiguous().to_sparse_csr()
    crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
    return csr, sp.csc_matrix((val.numpy(), col.numpy(), crow.numpy()), shape=tuple(t.shape))


@torch.no_grad()
def accumulate(batches_a, batches_b, keep: bool = True) -> PairActivations:
    """Streaming sums over paired activation batches (row t of both is the same token). `keep` also
    keeps every activation, sparse, for compositions and examples."""
    s_ab = cof = s_a = s_b = q_a = q_b = None
    parts_a, parts_b, n = [], [], 0
    for A, B in zip(batches_a, batches_b, strict=True):
        if s_ab is None:
            da, db = A.shape[1], B.shape[1]
            s_ab, cof = torch.zeros(da, db, dtype=torch.float64), torch.zeros(da, db, dtype=torch.float64)
            s_a, q_a, f_a, s_b, q_b, f_b = (torch.zeros(d, dtype=torch.float64) for d in (da, da, da, db, db, db))
        At, a_csc = _csc(A)
        ones = torch.sparse_csr_tensor(At.crow_indices(), At.col_indices(), torch.ones_like(At.values()), At.shape,
                                       check_invariants=False)
        s_ab += torch.sparse.mm(At, B)  # only a's non-zeros are touched
        cof += torch.sparse.mm(ones, (B > 0).float())
        s_a += A.sum(0)
        q_a += (A * A).sum(0)
        s_b += B.sum(0)
        q_b += (B * B).sum(0)
        f_a += (A > 0).sum(0)
        f_b += (B > 0).sum(0)
        if keep:
            parts_a.append(a_csc)
            parts_b.append(_csc(B)[1])
        n += len(A)
    cov = s_ab - torch.outer(s_a, s_b) / n
    var_a, var_b = q_a - s_a ** 2 / n, q_b - s_b ** 2 / n
    r = (cov / torch.sqrt(torch.outer(var_a, var_b))).nan_to_num(0.0)
    acts_a, acts_b = (sp.vstack(parts, format="csc") if keep else None for parts in (parts_a, parts_b))
    return PairActivations(n=n, pearson=r.float().numpy(), cofire=cof.numpy(), fire_a=f_a.numpy(), fire_b=f_b.numpy(),
                           acts_a=acts_a, acts_b=acts_b)


def pair_activations(a: SAERecord, b: SAERecord, xa: torch.Tensor, xb: torch.Tensor, batch: int = 8192) -> PairActivations:
    """Activation statistics of a pair; xa[t] and xb[t] are the same token at a's and b's layers."""
    if len(xa) != len(xb):
        raise ValueError(f"{a.meta.sae_id} and {b.meta.sae_id}: activations cover {len(xa)} vs {len(xb)} tokens")
    return accumulate(activation_batches(a, xa, batch), activation_batches(b, xb, batch))


def top_correlations(p: PairActivations, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(feature_a, feature_b) of each a-feature's top-k by Pearson r."""
    k = min(k, p.pearson.shape[1])
    top = np.argsort(-p.pearson, axis=1)[:, :k]
    return np.repeat(np.arange(p.pearson.shape[0]), k), top.ravel()


@torch.no_grad()
def weight_match_quality(a: SAERecord, b: SAERecord, p: PairActivations, fa: np.ndarray, fb: np.ndarray,
                         xa: torch.Tensor, xb: torch.Tensor) -> dict:
    """SAE Match's checks of an assignment (fa[i] -> fb[i]) with real activations:
    matching score = mean P(b_j fires | a_i fires) over assigned pairs whose a fires at all, and the
    explained variance of encode_a(x_a) -> permute -> decode_b against x_b."""
    fired = p.fire_a[fa] > 0
    matching = float((p.cofire[fa, fb][fired] / p.fire_a[fa][fired]).mean()) if fired.any() else None
    m = a.meta
    acts = encode(a.weights, xa, m.arch, m.k, m.extra.get("apply_b_dec_to_input", True))
    moved = torch.zeros((len(xa), b.meta.d_sae))
    moved[:, torch.from_numpy(fb)] = acts[:, torch.from_numpy(fa)]
    recon = decode(b.weights, moved)
    ev = 1 - float(((xb - recon) ** 2).sum() / ((xb - xb.mean(0)) ** 2).sum())
    return {"matching_score": matching, "explained_variance": ev}


def _firing(col: sp.csc_matrix, j: int) -> np.ndarray:
    return col.indices[col.indptr[j]:col.indptr[j + 1]]


def _jac(x: np.ndarray, y: np.ndarray) -> float:
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / max(len(x) + len(y) - inter, 1)


def compositions(p: PairActivations, dec_cos: np.ndarray, parents: int = 5, min_jaccard: float = 0.5,
                 margin: float = 0.15, pass_r: float = 0.9, pass_cos: float = 0.9) -> list[tuple]:
    """(feature_b, kind, [parents], score) for layer-b features that act as a quasi-boolean combination
    of layer-a features (Balcells et al.). Criteria, on firing sets over the same tokens:
    - PASS: one parent with Pearson r ≥ 0.9 and decoder cosine ≥ 0.9 (the feature is carried through);
    - AND:  two parents whose joint firing (both fire) has Jaccard ≥ 0.5 with b's firing and beats the
            best single parent's Jaccard by ≥ 0.15;
    - OR:   the same for the union of the two parents' firing (either fires).
    Parents are b's `parents` most correlated a-features (r > 0.05); score is the Jaccard."""
    out = []
    order = np.argsort(-p.pearson, axis=0)[:parents].T  # [d_b, parents]
    for j in range(p.pearson.shape[1]):
        sb = _firing(p.acts_b, j)
        if len(sb) == 0:
            continue
        cand = [i for i in order[j] if p.pearson[i, j] > 0.05]
        best = cand[0] if cand else None
        if best is not None and p.pearson[best, j] >= pass_r and dec_cos[best, j] >= pass_cos:
            out.append((j, "PASS", [int(best)], float(p.pearson[best, j])))
            continue
        sets = {i: _firing(p.acts_a, i) for i in cand}
        single = max((_jac(sb, s) for s in sets.values()), default=0.0)
        found = None
        for x in range(len(cand)):
            for y in range(x + 1, len(cand)):
                s1, s2 = sets[cand[x]], sets[cand[y]]
                for kind, combo in (("AND", np.intersect1d(s1, s2, assume_unique=True)),
                                    ("OR", np.union1d(s1, s2))):
                    jac = _jac(sb, combo)
                    if jac >= min_jaccard and jac >= single + margin and (found is None or jac > found[3]):
                        found = (j, kind, sorted([int(cand[x]), int(cand[y])]), jac)
        if found:
            out.append(found)
    return out


def examples(acts: sp.csc_matrix, tokens: np.ndarray, tokenizer, n_top: int = 8, n_random: int = 3,
             context: int = 6, seed: int = 0) -> list[tuple]:
    """(feature, kind, activation, token index, context tokens, highlight position) per feature: its top
    activations and a few random firing tokens, each with the tokens around it (same document)."""
    rng = np.random.default_rng(seed)
    docs, ids = tokens["doc"], tokens["token_ids"]
    rows = []
    for j in range(acts.shape[1]):
        idx, val = acts.indices[acts.indptr[j]:acts.indptr[j + 1]], acts.data[acts.indptr[j]:acts.indptr[j + 1]]
        if len(idx) == 0:
            continue
        top = np.argpartition(-val, n_top - 1)[:n_top] if len(val) > n_top else np.arange(len(val))
        top = top[np.argsort(-val[top])]
        picks = [("top", t) for t in top]
        if len(val) > n_top:  # a few random firing tokens beside the top ones
            draw = rng.choice(len(val), min(n_random + n_top, len(val)), replace=False)
            picks += [("random", t) for t in draw[~np.isin(draw, top)][:n_random]]
        for kind, t in picks:
            tok = int(idx[t])
            lo, hi = max(0, tok - context), min(len(ids), tok + context + 1)
            span = [i for i in range(lo, hi) if docs[i] == docs[tok]]
            words = tokenizer.convert_ids_to_tokens([int(ids[i]) for i in span])
            rows.append((j, kind, float(val[t]), tok, words, span.index(tok)))
    return rows
