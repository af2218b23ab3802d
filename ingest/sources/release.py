"""sae_lens pretrained releases by name: `RELEASE:SAE_ID`, or every SAE of a RELEASE.

Loads through sae_lens itself (its registry, conversion loader and SAE classes), so embedding rescaling,
normalisation folding and every architecture it knows come with it. Files come from the Hugging Face Hub
or, with HF_HUB_OFFLINE=1, from the local cache ($HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/…).
"""

from __future__ import annotations

import re

from atlas.sae import SAEError, SAERecord

from .saelens import record_from_state

SEP = ":"


def directory() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def lookup(release: str):
    info = directory().get(release)
    if info is None:
        close = [r for r in directory() if release.split("-")[0] in r][:3]
        raise SAEError(f"release {release!r}: not in sae_lens's pretrained registry"
                       + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return info


def release_ids(release: str) -> list[str]:
    """Every SAE id the registry lists for a release, in its order."""
    return list(lookup(release).saes_map)


def _fit_shapes(loader):
    """sae_lens's Gemma Scope loaders take d_in/d_sae from the repo and folder names; take them from the
    tensors instead (they agree on real files), so the registry path also reads small test files."""
    def load(**kw):
        cfg, state, log_sparsity = loader(**kw)
        if "W_enc" in state:
            cfg["d_in"], cfg["d_sae"] = (int(n) for n in state["W_enc"].shape)
        if "W_dec" in state and "d_out" in cfg:
            cfg["d_out"] = int(state["W_dec"].shape[1])
        return cfg, state, log_sparsity
    return load


def read(name: str) -> SAERecord:
    """One SAE of a release, `RELEASE:SAE_ID`."""
    release, sep, sae_id = name.partition(SEP)
    if not sep or not sae_id:
        raise SAEError(f"{name}: expected RELEASE:SAE_ID (or a whole RELEASE with `atlas ingest --release`)")
    info = lookup(release)
    if sae_id not in info.saes_map:
        raise SAEError(f"release {release!r}: no SAE {sae_id!r} (it has {len(info.saes_map)}, "
                       f"e.g. {', '.join(list(info.saes_map)[:3])})")
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS, get_conversion_loader_name

    loader = _fit_shapes(NAMED_PRETRAINED_SAE_LOADERS[get_conversion_loader_name(release)])
    try:
        sae, cfg, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id, device="cpu",
                                                                           converter=loader)
    except LocalEntryNotFoundError:
        raise SAEError(f"{name}: files of {info.repo_id} are not in the Hugging Face cache and the Hub cannot be "
                       f"reached (HF_HUB_OFFLINE or no network); download them once with network access") from None
    except (OSError, HFValidationError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SAEError(f"{name}: sae_lens could not load it: {first}") from None
    state = {k: v.detach().float().cpu().numpy() for k, v in sae.state_dict().items()}
    rec = record_from_state(cfg, state, name, name)
    m = rec.meta
    m.fmt, m.release = "release", release
    m.model = m.model if m.model != "unknown" else info.model
    m.neuronpedia_id = m.neuronpedia_id or info.neuronpedia_id.get(sae_id)
    path = info.saes_map[sae_id]
    if v := re.search(r"(?:^|[/_])(canonical|average_l0_\d+|trainer_\d+|seed\d+|best)$", sae_id):
        m.variant = v.group(1)
    if l0 := re.search(r"average_l0_(\d+)", path):
        m.l0 = float(l0.group(1))
    elif info.expected_l0.get(sae_id):
        m.l0 = float(info.expected_l0[sae_id])
    if log_sparsity is not None:
        m.extra["log_density"] = log_sparsity.float().cpu().numpy()
    return rec
