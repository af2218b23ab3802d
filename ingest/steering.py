"""Steering a causal LM with a feature's steering set, against its first direction and a random one
(docs/design.md, Steering sets).

Four conditions, each an edit at every token of every prompt: `clean` (none); `first` (α · the first chain
member's unit direction at its hook); `set` (α · each member's unit direction at its own hook: SAE feature
flow's multi-layer steering); `random` (at the set's hooks, random directions of the same lengths: the
control). Measured per condition:
- the target feature's mean activation (the root feature, at its SAE's hook) over held-out windows;
- the mean log-probability of the target's top tokens (the 10 tokens its last chain direction promotes most
  directly: through the final norm and the unembedding, `unembed(ln_final(d)) − unembed(ln_final(−d))`, which
  cancels the norm's bias) as the next token, over the same windows;
- the KL divergence of the next-token distribution from clean at unrelated tokens (those where the target is
  silent clean): what steering costs elsewhere;
- greedy continuations of a few prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from atlas.encode import encode_record
from atlas.sae import SAERecord

from .ablation import Windows
from .hooks import HookedRunner, add

CONDITIONS = ("clean", "first", "set", "random")
TOP_TOKENS = 10


@dataclass(frozen=True)
class Member:
    """One chain member: its SAE, feature, decoder row W_dec[feature] [d] and the hook it is added at."""

    sae_id: str
    feature: int
    direction: np.ndarray
    hook: str


@dataclass
class Comparison:
    alpha: float
    activation: dict[str, list[float]]
    """Condition → each chain member's mean activation over the windows' tokens."""
    target: int
    """Index of the target (root) feature among the members."""
    top_tokens: list[str]
    logprob: dict[str, float]
    """Condition → mean log P(next token ∈ top tokens)."""
    kl: dict[str, float]
    """Condition → mean KL(clean ‖ condition) of the next-token distribution at unrelated tokens."""
    unrelated: int
    """Tokens the KL is measured at: those where the target is silent clean."""
    continuations: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    """(prompt, condition → greedy continuation)."""


def edits(members: list[Member], alpha: float, seed: int = 0) -> dict[str, dict]:
    """Condition → {hook: edit}: unit directions scaled by α (members sharing a hook add up)."""
    rng = np.random.default_rng(seed)
    unit = [torch.from_numpy(np.asarray(m.direction, np.float32) / max(float(np.linalg.norm(m.direction)), 1e-12))
            for m in members]
    noise = [torch.from_numpy(rng.standard_normal(len(u)).astype(np.float32)) for u in unit]
    noise = [n / n.norm() for n in noise]

    def at(pairs):
        out: dict[str, torch.Tensor] = {}
        for hook, v in pairs:
            out[hook] = out.get(hook, 0) + alpha * v
        return {h: add(v) for h, v in out.items()}

    return {"clean": {}, "first": at([(members[0].hook, unit[0])]),
            "set": at([(m.hook, u) for m, u in zip(members, unit)]),
            "random": at([(m.hook, n) for m, n in zip(members, noise)])}


def direct_logits(model, direction: np.ndarray) -> torch.Tensor:
    """[vocab] the logits a direction writes directly (TransformerBridge or HookedTransformer): through the final
    norm and the unembedding, odd part only (the norm's bias cancels)."""
    d = torch.from_numpy(np.asarray(direction, np.float32)).to(next(model.parameters()).device)[None, None]
    return (model.unembed(model.ln_final(d)) - model.unembed(model.ln_final(-d)))[0, 0].float().cpu()


@torch.no_grad()
def compare(runner: HookedRunner, tokenizer, windows: Windows, saes: dict[str, SAERecord], members: list[Member],
            target: int, alpha: float, prompts: int = 3, prompt_tokens: int = 8, new_tokens: int = 12,
            seed: int = 0, batch: int = 4) -> Comparison:
    """The four conditions on `windows` of a causal LM (docs at the top of this module)."""
    conds = edits(members, alpha, seed)
    hooks = list(dict.fromkeys(saes[m.sae_id].meta.hook for m in members))
    keep = windows.keep
    top = torch.topk(direct_logits(runner.model, members[-1].direction), TOP_TOKENS).indices
    activation, clean_target = {}, None
    t = members[target]
    for name, edit in conds.items():
        got = {h: x.float().cpu() for h, x in runner.run(windows.inputs, capture=hooks, edit=edit).items()}
        acts = {m.sae_id: encode_record(saes[m.sae_id], got[saes[m.sae_id].meta.hook].flatten(0, 1))
                for m in members}
        activation[name] = [float(acts[m.sae_id][:, m.feature][keep.flatten()].mean()) for m in members]
        if name == "clean":
            clean_target = acts[t.sae_id][:, t.feature].reshape(keep.shape)
    unrelated = keep & (clean_target <= 0)
    sums = {name: [0.0, 0.0] for name in conds}  # Σ log P(top), Σ KL
    for start in range(0, len(keep), batch):  # logits [batch, L, vocab]: a few windows at a time
        part = windows.rows(slice(start, start + batch))
        k = part.keep
        mask = unrelated[start:start + batch]
        clean = None
        for name, edit in conds.items():
            lp = torch.log_softmax(runner.logits(part.inputs, edit).float().cpu(), -1)
            clean = lp if name == "clean" else clean
            sums[name][0] += float(torch.logsumexp(lp[..., top], -1)[k].sum())
            sums[name][1] += float((clean.exp() * (clean - lp)).sum(-1)[mask].sum())
    n_keep, n_mask = int(keep.sum()), int(unrelated.sum())
    logprob = {name: v[0] / n_keep for name, v in sums.items()}
    kl = {name: v[1] / max(n_mask, 1) for name, v in sums.items()}
    out = Comparison(alpha, activation, target, [tokenizer.decode([t]) for t in top.tolist()], logprob, kl, n_mask)
    ids = windows.inputs["input_ids"]
    first = int((~keep[0]).long().argmin())  # the BOS positions before each window's own tokens
    for i in range(min(prompts, len(ids))):
        prompt = ids[i:i + 1, :first + prompt_tokens]
        out.continuations.append((tokenizer.decode(prompt[0, first:].tolist()),
                                  {name: greedy(runner, tokenizer, prompt, edit, new_tokens) for name, edit in conds.items()}))
    return out


def greedy(runner: HookedRunner, tokenizer, prompt: torch.Tensor, edit: dict, n: int) -> str:
    """n greedy tokens after `prompt` [1, L] with `edit` applied at every position (no cache: short runs)."""
    ids = prompt
    for _ in range(n):
        nxt = runner.logits(ids, edit)[0, -1].argmax().view(1, 1).cpu()
        ids = torch.cat([ids, nxt], 1)
    return tokenizer.decode(ids[0, prompt.shape[1]:].tolist())
