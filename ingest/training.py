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
    b_dec_init: str = "zeros"
    """"zeros" (sae_lens's own start) or "mean": the decoder bias starts at the training activations' mean. A
    decoder LM's residual stream has a large mean (SmolLM2, layer 5: |mean| 73 beside a median token norm of 91),
    which b_dec cannot learn from zero in a short run: features then fire broadly to rebuild it (layer 5, 150k
    samples: L0 559 of 1152 from zero, 303 from the mean; docs/design.md, SmolLM2)."""
    max_norm_multiple: float | None = None
    """Train (and measure) only on tokens whose activation norm is at most this multiple of the median norm:
    dictionary_learning's `max_activation_norm_multiple`. A decoder LM's massive activations (SmolLM2's residual
    stream: 2% of tokens, mostly " the", at 3-12x the median norm along three dimensions) otherwise hold most of the
    variance, and an SAE spends its dictionary on them (docs/design.md, Training a family). None: every token.
    FVU, L0 and dead fraction are measured on every held-out token; `fvu_kept` on the kept ones."""


NEW_FIELDS = {"b_dec_init": "zeros", "max_norm_multiple": None}
"""TrainConfig fields added after SAEs were cached: in the cache key only when not at this default, so the
SAEs trained before keep their keys."""


def init_seed(seed: int, model: str, hook: str, d_sae: int, dataset: str) -> int:
    """The initialisation (and batch order) seed of one SAE: a hash of what tells it apart from the family's
    other SAEs, so two SAEs share a start only when they are the same SAE (docs/design.md, Independent inits)."""
    text = json.dumps([seed, model, hook, d_sae, dataset])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1  # torch seeds are < 2^63


def config_hash(cfg: TrainConfig, layer: int, seed: int, dataset: str, n_tokens: int, hook: str | None = None) -> str:
    """Cache key of one SAE; `hook` only for SAEs off the residual stream (residual keys stay as they were)."""
    fields = {k: v for k, v in asdict(cfg).items() if NEW_FIELDS.get(k, object()) != v}
    text = json.dumps([fields, layer, seed, dataset, n_tokens] + ([hook] if hook else []), sort_keys=True)
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
def quality(sae, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """Fraction of variance unexplained (of y, a transcoder's target; else of x), mean L0 and the fraction of
    features that never fire on x."""
    feats = sae.encode(x)
    recon = sae.decode(feats)
    y = x if y is None else y
    fvu = ((y - recon) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    fired = (feats > 0)
    return {"fvu": float(fvu), "l0": float(fired.sum(1).float().mean()), "dead_frac": float((~fired.any(0)).float().mean())}


def _transcoder_class():
    """sae_lens's ReLU + L1 training SAE made a transcoder: each batch row is [input | target] (so sae_lens's
    trainer, its scaler and its schedules run unchanged), the features encode the input and the decoder predicts
    the target; b_dec is the output's bias (never subtracted from the input). sae_lens 6 trains no transcoder of
    its own; its inference Transcoder reads the result."""
    from sae_lens import StandardTrainingSAE
    from sae_lens.saes.sae import TrainStepOutput

    class TranscoderTrainingSAE(StandardTrainingSAE):
        def training_forward_pass(self, step_input):
            x, y = step_input.sae_in.split(self.cfg.d_in, dim=-1)
            feats, pre = self.encode_with_hidden_pre(x)
            out = self.decode(feats)
            mse = self.mse_loss_fn(out, y).sum(dim=-1).mean()
            inp = type(step_input)(**{**step_input.__dict__, "sae_in": x})
            aux = self.calculate_aux_loss(step_input=inp, feature_acts=feats, hidden_pre=pre, sae_out=out)
            return TrainStepOutput(sae_in=y, sae_out=out, feature_acts=feats, hidden_pre=pre,
                                   loss=mse + sum(aux.values()), losses={"mse_loss": mse, **aux})

    return TranscoderTrainingSAE


def train_sae(acts: torch.Tensor, layer: int, seed: int, dataset: str, out_root: Path, cfg: TrainConfig,
              model: str = DEFAULT_MODEL, hook: str | None = None, progress=None, target: torch.Tensor | None = None,
              hook_out: str | None = None) -> tuple[Path, dict]:
    """Train (or reuse from cache) one SAE on `acts` taken at `hook` (default: block `layer`'s output,
    blocks.L.hook_resid_post); returns its folder and its quality on held-out tokens. progress(samples so far)
    while it trains. With `target` (the same tokens at `hook_out`), a transcoder from `hook` to `hook_out`."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    if (target is None) != (hook_out is None) or (target is not None and (hook is None or target.shape != acts.shape)):
        raise ValueError("a transcoder needs its input hook, its output hook and a target of the input's shape")
    # a block's output (on MiniLM, BERT: hook_normalized_resid_post) keeps the cache key it had as resid_post
    resid = hook_out is None and (
        hook is None or hook in (f"blocks.{layer}.hook_resid_post", f"blocks.{layer}.hook_normalized_resid_post"))
    key = config_hash(cfg, layer, seed, dataset, len(acts), None if resid else hook + (f" -> {hook_out}" if hook_out else ""))
    site = "" if resid else "-" + hook.split(".", 2)[2].replace(".", "_") + ("-tc" if hook_out else "")
    folder = out_root / f"{dataset}-s{seed}{site}" / f"layer_{layer}-{key}"
    metrics_file = folder / "atlas_training.json"
    if metrics_file.exists():
        _name_hook(folder, hook or f"blocks.{layer}.hook_resid_post")
        return folder, json.loads(metrics_file.read_text())
    check_tokens(len(acts), cfg, f"{dataset} at {hook or f'blocks.{layer}.hook_resid_post'}")
    d_in = acts.shape[1]
    rows = acts if target is None else torch.cat([acts, target], dim=1)  # a transcoder's rows: [input | target]
    train, held = rows[: -cfg.eval_tokens], rows[-cfg.eval_tokens:]
    if cfg.b_dec_init not in ("zeros", "mean"):
        raise ValueError(f"b_dec_init {cfg.b_dec_init!r}: give 'zeros' or 'mean'")
    extra = {}
    if cfg.max_norm_multiple is not None:  # by the input's norm
        bar = cfg.max_norm_multiple * float(acts.norm(dim=1).median())
        n = len(train)
        train = train[train[:, :d_in].norm(dim=1) <= bar]
        extra["dropped_frac"] = 1 - len(train) / n
    start = seed if cfg.shared_init else init_seed(seed, model, hook or f"blocks.{layer}.hook_resid_post", cfg.d_sae, dataset)
    torch.manual_seed(start)
    sae = (StandardTrainingSAE if target is None else _transcoder_class())(StandardTrainingSAEConfig(
        d_in=d_in, d_sae=cfg.d_sae, l1_coefficient=cfg.l1_coefficient, device="cpu",
        normalize_activations="expected_average_only_in", apply_b_dec_to_input=target is None))
    trainer_cfg = SAETrainerConfig(total_training_samples=cfg.samples, train_batch_size_samples=cfg.batch, lr=cfg.lr,
                                   lr_end=cfg.lr_end, device="cpu", n_batches_for_norm_estimate=50)
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train, cfg.batch, start, progress))
    if cfg.b_dec_init == "mean":  # sae_lens's own scaling (sqrt(d_in) / mean norm), known first so b_dec starts there
        scale = float(d_in ** 0.5 / train.norm(dim=1).mean())
        trainer.activation_scaler.scaling_factor = scale  # fit() keeps a factor it finds, folds it in at the end
        with torch.no_grad():
            sae.b_dec.copy_(train[:, -d_in:].mean(0) * scale)  # the target's mean (an SAE's target is its input)
    sae = trainer.fit()

    def measure(r):
        return quality(sae, r[:, :d_in], None if target is None else r[:, d_in:])

    metrics = dict(measure(held), samples=cfg.samples, tokens=len(acts), init_seed=start, **extra)
    if cfg.max_norm_multiple is not None:
        metrics["fvu_kept"] = measure(held[held[:, :d_in].norm(dim=1) <= bar])["fvu"]
    md = sae.cfg.metadata
    md.model_name, md.hook_name, md.dataset_path = model, hook or f"blocks.{layer}.hook_resid_post", dataset
    sae.save_inference_model(folder)
    # sae_lens has no seed field: keep it beside the other metadata, where the atlas's reader looks
    cfg_path = folder / "cfg.json"
    saved = json.loads(cfg_path.read_text())
    if hook_out:  # sae_lens's own transcoder layout: its Transcoder (and the atlas's reader) load it
        saved.update(architecture="transcoder", d_out=d_in, apply_b_dec_to_input=False)
        saved["metadata"]["hook_name_out"] = hook_out
    saved["metadata"]["seed"] = seed
    saved["metadata"]["init_seed"] = start  # what torch was seeded with (docs/design.md, Independent inits)
    write_atomic(cfg_path, lambda tmp: tmp.write_text(json.dumps(saved, indent=1)))
    # the metrics file marks the folder complete: written whole or not at all, so a Ctrl-C never leaves a
    # marker a rerun trusts but cannot read
    write_atomic(metrics_file, lambda tmp: tmp.write_text(json.dumps(metrics, indent=1)))
    return folder, metrics
