"""SAEs trained on stored activations with sae_lens's own trainer, saved in the sae_lens layout.

ReLU + L1 ("standard"), activations normalised to an expected norm of sqrt(d_in) during training and
the factor folded back into the weights at the end (sae_lens does both). Trained SAEs are cached by a
hash of their configuration and data, so a second run of the demo reuses them.

Each SAE starts from its own initialisation (init_seed: the seed, model, hook, width and dataset), so that no
two SAEs of a family share a starting dictionary and a lineage or a width split is never an echo of one
(docs/design.md, Independent inits). `TrainConfig.shared_init` restores one start per seed, as a control.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from atlas.store.parts import write_atomic

from .activations import DEFAULT_MODEL


@dataclass(frozen=True)
class TrainConfig:
    d_sae: int = 768
    """Features per SAE (2x the MiniLM width)."""
    l1_coefficient: float = 4.0
    """With inputs normalised to norm sqrt(d_in): L0 about 23 at layer 3 after 3M samples (1.0 gives L0 90)."""
    samples: int = 4_200_000
    """Training samples. Measured here (layer 3, two seeds): Paulo & Belrose shared fraction 44% after
    1.5M samples, 49% after 3M: agreement is plateauing."""
    batch: int = 4096
    lr: float = 3e-4
    lr_end: float = 3e-5
    eval_tokens: int = 20_000
    """Held-out tokens (the last ones of the corpus) for FVU, L0 and dead fraction."""
    shared_init: bool = False
    """Every SAE of one seed starts from torch.manual_seed(seed) and sees the tokens in one order: the same
    starting dictionary for every layer, width and dataset (a wider SAE's first rows equal the narrower one's).
    A control for measuring what a shared start does to matching; off, each SAE starts from init_seed(...)."""


def init_seed(seed: int, model: str, hook: str, d_sae: int, dataset: str) -> int:
    """The initialisation (and batch order) seed of one SAE: a hash of what tells it apart from the family's
    other SAEs, so two SAEs share a start only when they are the same SAE (docs/design.md, Independent inits)."""
    text = json.dumps([seed, model, hook, d_sae, dataset])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1  # torch seeds are < 2^63


def config_hash(cfg: TrainConfig, layer: int, seed: int, dataset: str, n_tokens: int, hook: str | None = None) -> str:
    """Cache key of one SAE; `hook` only for SAEs off the residual stream (residual keys stay as they were)."""
    text = json.dumps([asdict(cfg), layer, seed, dataset, n_tokens] + ([hook] if hook else []), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _batches(x: torch.Tensor, batch: int, seed: int, progress=None):
    """Full batches of x in a fresh random order each epoch, forever (the trainer stops asking); progress(samples
    so far) after each. Fewer rows than one batch would yield nothing, forever: refused."""
    if len(x) < batch:
        raise ValueError(f"{len(x):,} training tokens are fewer than one batch ({batch:,}): nothing to train on")
    g = torch.Generator().manual_seed(seed)
    done = 0
    while True:
        for idx in torch.randperm(len(x), generator=g).split(batch):
            if len(idx) == batch:
                yield x[idx]
                done += batch
                if progress:
                    progress(done)


def check_tokens(n_tokens: int, cfg: TrainConfig, what: str = "the corpus") -> None:
    """Refuse (one line) a token budget that leaves less than one batch to train on once eval_tokens are held out."""
    left = n_tokens - cfg.eval_tokens
    if left < cfg.batch:
        raise ValueError(f"{n_tokens:,} tokens of {what}: the last {cfg.eval_tokens:,} are held out for FVU, L0 and "
                         f"dead fraction, which leaves {max(left, 0):,} to train on, fewer than one batch ({cfg.batch:,}); "
                         f"give at least {cfg.eval_tokens + cfg.batch:,} tokens (--max-tokens)")


def _name_hook(folder: Path, hook: str) -> None:
    """A cached SAE trained on this hook's tensor under its old name (MiniLM's block outputs were called
    hook_resid_post) gets the hook's TransformerLens name in its cfg.json."""
    cfg_path = folder / "cfg.json"
    saved = json.loads(cfg_path.read_text())
    if saved["metadata"].get("hook_name") != hook:
        saved["metadata"]["hook_name"] = hook
        write_atomic(cfg_path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))


@torch.no_grad()
def quality(sae, x: torch.Tensor) -> dict:
    """Fraction of variance unexplained, mean L0 and the fraction of features that never fire on x."""
    feats = sae.encode(x)
    recon = sae.decode(feats)
    fvu = ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    fired = (feats > 0)
    return {"fvu": float(fvu), "l0": float(fired.sum(1).float().mean()), "dead_frac": float((~fired.any(0)).float().mean())}


def train_sae(acts: torch.Tensor, layer: int, seed: int, dataset: str, out_root: Path, cfg: TrainConfig,
              model: str = DEFAULT_MODEL, hook: str | None = None, progress=None) -> tuple[Path, dict]:
    """Train (or reuse from cache) one SAE on `acts` taken at `hook` (default: block `layer`'s output,
    blocks.L.hook_resid_post); returns its folder and its quality on held-out tokens. progress(samples so far)
    while it trains."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    # a block's output (on MiniLM, BERT: hook_normalized_resid_post) keeps the cache key it had as resid_post
    resid = hook is None or hook in (f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_normalized_resid_post")
    key = config_hash(cfg, layer, seed, dataset, len(acts), None if resid else hook)
    site = "" if resid else "-" + hook.split(".", 2)[2].replace(".", "_")
    folder = out_root / f"{dataset}-s{seed}{site}" / f"layer_{layer}-{key}"
    metrics_file = folder / "atlas_training.json"
    if metrics_file.exists():
        _name_hook(folder, hook or f"blocks.{layer}.hook_resid_post")
        return folder, json.loads(metrics_file.read_text())
    check_tokens(len(acts), cfg, f"{dataset} at {hook or f'blocks.{layer}.hook_resid_post'}")
    train, held = acts[: -cfg.eval_tokens], acts[-cfg.eval_tokens:]
    start = seed if cfg.shared_init else init_seed(seed, model, hook or f"blocks.{layer}.hook_resid_post", cfg.d_sae, dataset)
    torch.manual_seed(start)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(
        d_in=acts.shape[1], d_sae=cfg.d_sae, l1_coefficient=cfg.l1_coefficient, device="cpu",
        normalize_activations="expected_average_only_in"))
    trainer_cfg = SAETrainerConfig(total_training_samples=cfg.samples, train_batch_size_samples=cfg.batch, lr=cfg.lr,
                                   lr_end=cfg.lr_end, device="cpu", n_batches_for_norm_estimate=50)
    sae = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train, cfg.batch, start, progress)).fit()
    metrics = dict(quality(sae, held), samples=cfg.samples, tokens=len(acts), init_seed=start)
    md = sae.cfg.metadata
    md.model_name, md.hook_name, md.dataset_path = model, hook or f"blocks.{layer}.hook_resid_post", dataset
    sae.save_inference_model(folder)
    # sae_lens has no seed field: keep it beside the other metadata, where the atlas's reader looks
    cfg_path = folder / "cfg.json"
    saved = json.loads(cfg_path.read_text())
    saved["metadata"]["seed"] = seed
    saved["metadata"]["init_seed"] = start  # what torch was seeded with (docs/design.md, Independent inits)
    write_atomic(cfg_path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))
    # the metrics file marks the folder complete: written whole or not at all, so a Ctrl-C never leaves a
    # marker a rerun trusts but cannot read
    write_atomic(metrics_file, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1)))
    return folder, metrics
