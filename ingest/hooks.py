"""Activations at TransformerLens hook names, captured from (and edited in) any supported model; and the
one mapping from the names SAE files give their hooks to those names.

SAEs name where they read by TransformerLens hook (`blocks.3.hook_mlp_out`, `blocks.3.attn.hook_z`,
`blocks.3.ln2.hook_normalized`, ...), each with the meaning TransformerLens gives it on that architecture
(docs/design.md, Activations by hook). `HookedRunner` resolves such a name to a place in the model and runs
the model once, returning the requested activations in the shape sae_lens expects ([batch, pos, d];
attention heads flattened to n_heads * d_head) and optionally editing activations at some hooks on the way
(an ablation: subtract a vector at chosen token positions, read a later hook). The forward pass stops as
soon as every requested activation is captured.

One registry, RESOLVERS, maps a model architecture to a resolver (hook name → Site): TransformerLens's own
hook points (`HookedTransformer`, and `TransformerBridge`, which wraps every Hugging Face decoder LM the
atlas runs), and Hugging Face BERT (MiniLM) through forward hooks on its modules with the meaning of
TransformerLens's `HookedEncoder` (docs/design.md, Hooks on a post-LN BERT).

`tl_hook` / `sae_hooks` map Hugging Face module paths (`model.layers.3.mlp`, `encoder.layer.2.output`,
sparsify's `layers.6`) onto those names; the SAE readers call `sae_hooks` in one place (atlas_ingest.sources).

Nothing here imports torch at module level: the readers import the name mapping without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

Edit = Callable[["torch.Tensor"], "torch.Tensor"]
"""An intervention: the activation at a hook [batch, pos, d] → the value that flows on (same shape)."""


class HookError(ValueError):
    """A hook name the model does not have (or that did not fire), or that no rule maps: the message names it."""


# -- names ------------------------------------------------------------------------------------------------

_TL_NAME = re.compile(r"blocks\.\d+\.(?:[a-z0-9_]+\.)*hook_[a-z0-9_]+|hook_embed|hook_pos_embed|hook_tokens"
                      r"|embed\.hook_out|ln_final\.hook_normalized")
"""A TransformerLens hook name (whether a given model has it is the runner's check)."""

_WRAPPERS = re.compile(r"^(?:base_model\.|model\.|transformer\.|gpt_neox\.|bert\.|roberta\.|language_model\.)+")
"""Module-path prefixes of the HF wrappers around the block list (CausalLM → model → layers, peft, ...)."""

_SANDWICH = re.compile(r"gemma-?[234]|gemma[234]|olmo-?2", re.I)
"""Models that norm each sub-layer's output before the add (Gemma 2/3, OLMo 2): there TransformerLens's
hook_mlp_out / hook_attn_out come after that norm, while the HF `mlp` / `self_attn` module outputs come
before it, so those module paths map to the TransformerBridge names of the modules' own outputs."""


@dataclass(frozen=True)
class Rule:
    """A module path (after _WRAPPERS) → TransformerLens name, for the module's output and its input."""

    pattern: re.Pattern
    out: str | None
    into: str | None = None
    sandwich_out: str | None = None


def _rule(pattern: str, out, into=None, sandwich_out=None) -> Rule:
    return Rule(re.compile(pattern), out, into, sandwich_out)


RULES = (
    # decoder blocks: HF `model.layers.K`, GPT-2 `transformer.h.K`, GPT-NeoX `gpt_neox.layers.K`, sparsify `layers.K`
    _rule(r"(?:layers|h)\.(\d+)", "blocks.{}.hook_resid_post", "blocks.{}.hook_resid_pre"),
    _rule(r"(?:layers|h)\.(\d+)\.mlp", "blocks.{}.hook_mlp_out", "blocks.{}.mlp.hook_in", "blocks.{}.mlp.hook_out"),
    _rule(r"(?:layers|h)\.(\d+)\.(?:self_attn|attn|attention)", "blocks.{}.hook_attn_out", "blocks.{}.attn.hook_in",
          "blocks.{}.attn.hook_out"),
    # BERT (post-LN): the layer's output is TransformerLens's normalized_resid_post (docs/design.md)
    _rule(r"encoder\.layer\.(\d+)", "blocks.{}.hook_normalized_resid_post", "blocks.{}.hook_resid_pre"),
    _rule(r"encoder\.layer\.(\d+)\.output", "blocks.{}.hook_normalized_resid_post", "blocks.{}.mlp.hook_post"),
    _rule(r"encoder\.layer\.(\d+)\.output\.dense", "blocks.{}.hook_mlp_out", "blocks.{}.mlp.hook_post"),
    _rule(r"encoder\.layer\.(\d+)\.intermediate", "blocks.{}.mlp.hook_post"),
    _rule(r"encoder\.layer\.(\d+)\.intermediate\.dense", "blocks.{}.mlp.hook_pre"),
    _rule(r"encoder\.layer\.(\d+)\.attention\.output\.dense", "blocks.{}.hook_attn_out", "blocks.{}.attn.hook_z"),
    # dictionary_learning's submodule names
    _rule(r"resid_post_layer_(\d+)", "blocks.{}.hook_resid_post"),
    _rule(r"mlp_out_layer_(\d+)", "blocks.{}.hook_mlp_out"),
    _rule(r"attn_out_layer_(\d+)", "blocks.{}.hook_attn_out"),
    # the token embedding: the residual stream before block 0
    _rule(r"embed_tokens|wte|embed|embeddings\.word_embeddings", "hook_embed"),
)
"""Module paths the atlas understands, each mapped to the TransformerLens name of the same tensor."""


def tl_hook(name: str, model: str | None = None, side: str = "out") -> str:
    """The TransformerLens name of a hook: a TransformerLens name as it is; an HF module path by RULES
    (`side` "in": the module's input, as a transcoder reads it). HookError (naming --hook) for a name no
    rule knows."""
    name = (name or "").strip()
    if _TL_NAME.fullmatch(name):
        return name
    path = _WRAPPERS.sub("", name)
    for rule in RULES:
        m = rule.pattern.fullmatch(path)
        if m is None:
            continue
        template = rule.into if side == "in" else \
            rule.sandwich_out if rule.sandwich_out and model and _SANDWICH.search(model) else rule.out
        if template is not None:
            return template.format(*m.groups())
    what = f"hook {name!r}" if name else "no hook name"
    raise HookError(f"{what}{' (as the input of a transcoder)' if side == 'in' and name else ''}: neither a "
                    f"TransformerLens hook name nor a module path the atlas maps (model.layers.K[.mlp|.self_attn], "
                    f"transformer.h.K, encoder.layer.K.output, layers.K[.mlp]); pass --hook with the TransformerLens "
                    f"name, e.g. --hook blocks.K.hook_resid_post")


def sae_hooks(hook: str, hook_out: str | None, kind: str, model: str | None) -> tuple[str, str | None]:
    """(hook, hook_out) of an SAE as TransformerLens names: what the SAE reads and, for a transcoder, where
    it writes. A transcoder named by one module path (sparsify: hook = hook_out = `layers.6.mlp`) reads
    that module's input and writes its output."""
    same = hook_out is not None and hook == hook_out and not _TL_NAME.fullmatch(hook or "")
    mapped = tl_hook(hook, model, side="in" if kind != "sae" and same else "out")
    return mapped, (tl_hook(hook_out, model) if hook_out else None)


# -- places in a model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """Where a hook's activation lives: a module's output ("out"), its first input ("in"), or, on a
    LayerNorm module, its normalized input before the affine ("normalized": TransformerLens's
    `hook_normalized`); optionally with heads [batch, pos, n_heads, d_head] to flatten."""

    module: nn.Module
    where: str = "out"
    heads: bool = False


_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HEADS = ("hook_z", "hook_q", "hook_k", "hook_v", "hook_result")


def _transformer_lens(model, hook: str) -> Site:
    point = model.hook_dict.get(hook)
    if point is None:
        raise HookError(f"hook {hook!r}: the model has no such hook point (see model.hook_dict)")
    # q, k, v and z are [batch, pos, head, d_head]; sae_lens reads them with the heads flattened
    return Site(point, "out", heads=hook.rsplit(".", 1)[-1] in _HEADS)


# BERT is post-LN: each sub-layer's output is added to the residual and then layer-normed. The names mean
# what TransformerLens's HookedEncoder (BertBlock) means; docs/design.md ("Hooks on a post-LN BERT").
_BERT = {
    "hook_resid_pre": lambda layer: Site(layer, "in"),  # the block's input: the previous block's output
    "attn.hook_z": lambda layer: Site(layer.attention.output.dense, "in"),  # per-head context, heads flattened
    "hook_attn_out": lambda layer: Site(layer.attention.output.dense, "out"),  # before the add + LN
    "hook_resid_mid": lambda layer: Site(layer.attention.output.LayerNorm, "in"),  # resid_pre + attn_out
    "hook_mlp_in": lambda layer: Site(layer.attention.output.LayerNorm, "in"),  # = resid_mid (TL: its clone)
    "ln1.hook_normalized": lambda layer: Site(layer.attention.output.LayerNorm, "normalized"),
    "mlp.hook_pre": lambda layer: Site(layer.intermediate.dense, "out"),
    "mlp.hook_post": lambda layer: Site(layer.intermediate, "out"),  # after GELU
    "hook_mlp_out": lambda layer: Site(layer.output.dense, "out"),  # before the add + LN
    "hook_resid_post": lambda layer: Site(layer.output.LayerNorm, "in"),  # LN1(resid_mid) + mlp_out
    "ln2.hook_normalized": lambda layer: Site(layer.output.LayerNorm, "normalized"),
    "hook_normalized_resid_post": lambda layer: Site(layer, "out"),  # LN2(resid_post) = hidden_states[L + 1]
}


def _bert_layers(model) -> nn.ModuleList:
    for path in ("encoder.layer", "bert.encoder.layer"):
        obj = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is not None:
            return obj
    raise HookError(f"{type(model).__name__}: no encoder.layer modules (not a BERT model)")


def _bert(model, hook: str) -> Site:
    m = _BLOCK.fullmatch(hook)
    if not m or m.group(2) not in _BERT:
        raise HookError(f"hook {hook!r}: a BERT model has blocks.L.{{{', '.join(_BERT)}}}")
    layers = _bert_layers(model)
    layer = int(m.group(1))
    if not 0 <= layer < len(layers):
        raise HookError(f"hook {hook!r}: the model has layers 0..{len(layers) - 1}")
    return _BERT[m.group(2)](layers[layer])


RESOLVERS: dict[str, Callable[[nn.Module, str], Site]] = {"transformer_lens": _transformer_lens, "bert": _bert}
"""Architecture → hook resolver. Add an architecture by adding its resolver here."""


def architecture(model: nn.Module) -> str:
    """The RESOLVERS key for a model: TransformerLens models (HookedTransformer, TransformerBridge) by
    their hook points, HF ones by model_type."""
    if hasattr(model, "hook_dict") and hasattr(model, "cfg"):
        return "transformer_lens"
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in RESOLVERS:
        return model_type
    raise HookError(f"{type(model).__name__} (model_type {model_type!r}): no hook resolver; "
                    f"supported: {', '.join(RESOLVERS)}")


class _Stop(Exception):
    """Raised from the last capture hook to end the forward pass early."""


def subtract(vector: torch.Tensor, positions: torch.Tensor) -> Edit:
    """An edit that subtracts `vector` [d] at the token positions where `positions` [batch, pos] is True
    (or weighted by `positions` where it is a float tensor)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        return x - positions.to(x.device).unsqueeze(-1).to(x.dtype) * vector.to(x.device, x.dtype)
    return edit


def add(vector: torch.Tensor, positions: torch.Tensor | None = None) -> Edit:
    """An edit that adds `vector` [d] at every position (or where `positions` [batch, pos] is True)."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        v = vector.to(x.device, x.dtype)
        return x + (v if positions is None else positions.to(x.device).unsqueeze(-1).to(x.dtype) * v)
    return edit


def _normalized(module, x):
    """LayerNorm's input normalized, before its affine (TransformerLens's hook_normalized)."""
    import torch

    centred = x - x.mean(-1, keepdim=True)
    return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps)


class HookedRunner:
    """Runs a TransformerLens or Hugging Face model once, capturing and editing activations by hook name."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.arch = architecture(model)

    def site(self, hook: str) -> Site:
        """Where `hook` lives in this model; HookError (one line naming the hook) if it has no such hook."""
        return RESOLVERS[self.arch](self.model, hook)

    def check(self, hooks) -> None:
        """Raise HookError for the first hook this model lacks."""
        for h in hooks:
            self.site(h)

    def run(self, inputs: torch.Tensor | Mapping[str, torch.Tensor], capture=(),
            edit: Mapping[str, Edit] | None = None) -> dict[str, torch.Tensor]:
        """Activations {hook: [batch, pos, d]} at each `capture` hook, with each `edit` applied at its hook
        first (a capture at an edited hook sees the edited value). `inputs`: token ids [batch, pos] or the
        model's keyword inputs (input_ids, attention_mask). Stops once every capture is taken."""
        got, _ = self._run(inputs, list(dict.fromkeys(capture)), dict(edit or {}), logits=False)
        return got

    def logits(self, inputs, edit: Mapping[str, Edit] | None = None) -> torch.Tensor:
        """The language model's logits [batch, pos, vocab] with each `edit` applied at its hook."""
        return self._run(inputs, [], dict(edit or {}), logits=True)[1]

    def _mid_edits(self, edit: dict[str, Edit]) -> tuple[dict[str, Edit], list]:
        """On a TransformerBridge `hook_resid_mid` is the input of the MLP's norm: an edit there changes what the
        MLP reads but not the residual's skip path, where TransformerLens's edit changes both. As resid_mid =
        resid_pre + attn_out, the edit is applied at attn_out instead, exactly: attn_out' = edit(resid_pre +
        attn_out) − resid_pre (resid_pre read in the same pass). Returns the edits and the reader handles."""
        mids = [h for h in edit if h.endswith(".hook_resid_mid") and getattr(self.model, "original_model", None)
                is not None]
        handles = []
        for hook in mids:
            block = hook.rsplit(".", 1)[0]
            pre, out = f"{block}.hook_resid_pre", f"{block}.hook_attn_out"
            if out in edit or pre in edit:
                raise HookError(f"hook {hook!r}: an edit there cannot be combined with one at {out} or {pre}")
            seen: dict = {}
            handles.append(self.site(pre).module.register_forward_hook(
                lambda m, a, o, seen=seen: seen.__setitem__("x", o[0] if isinstance(o, tuple) else o)))
            fn = edit.pop(hook)
            edit[out] = lambda a, fn=fn, seen=seen: fn(seen["x"] + a) - seen["x"]
        return edit, handles

    def _run(self, inputs, capture: list[str], edit: dict[str, Edit], logits: bool):
        import torch

        edit, handles = self._mid_edits(dict(edit))
        sites = {h: self.site(h) for h in [*capture, *edit]}
        got: dict[str, torch.Tensor] = {}

        def make(hook: str, site: Site):
            def apply(x: torch.Tensor) -> torch.Tensor | None:
                shape = x.shape
                flat = x.flatten(-2) if site.heads and x.dim() == 4 else x  # the bridge's come flattened
                changed = None
                if hook in edit:
                    flat = edit[hook](flat)
                    changed = flat.reshape(shape)
                if hook in capture:
                    got[hook] = flat.detach()
                    if len(got) == len(capture) and not logits:
                        raise _Stop
                return changed

            if site.where == "normalized":
                def norm(module, args, out):
                    y = apply(_normalized(module, args[0]))
                    return None if y is None else y * module.weight + module.bias
                return site.module.register_forward_hook(norm)

            if site.where == "in":
                def pre(module, args, kwargs):
                    x = args[0] if args else kwargs["hidden_states"]
                    y = apply(x)
                    if y is None:
                        return None
                    return ((y, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": y})
                return site.module.register_forward_pre_hook(pre, with_kwargs=True)

            def post(module, args, out):
                x = out[0] if isinstance(out, tuple) else out
                y = apply(x)
                if y is None:
                    return None
                return (y, *out[1:]) if isinstance(out, tuple) else y
            return site.module.register_forward_hook(post)

        # edits first: where a hook both edits and captures, one hook function does both, in that order
        for hook in dict.fromkeys([*edit, *capture]):
            handles.append(make(hook, sites[hook]))
        out = None
        try:
            with torch.no_grad():
                out = self._forward(inputs, logits)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [h for h in capture if h not in got]
        if missing:
            raise HookError(f"hook {missing[0]!r} did not fire in the forward pass (is it enabled in this model?)")
        return got, out

    def _forward(self, inputs, logits: bool = False):
        if not isinstance(inputs, Mapping):
            inputs = {"input_ids": inputs}
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        if self.arch == "transformer_lens":
            # causal models run right-padded windows: padding never reaches an earlier position, so no mask
            return self.model(inputs["input_ids"], return_type="logits" if logits else None)
        out = self.model(**inputs)
        return getattr(out, "logits", None) if logits else None
