"""Activations at TransformerLens hook names, captured from (and edited in) any supported model.

SAEs name where they read by TransformerLens hook (`blocks.3.hook_mlp_out`, `blocks.3.attn.hook_z`,
`blocks.3.ln2.hook_normalized`, ...). `HookedRunner` resolves such a name to a place in the model and runs
the model once, returning the requested activations in the shape sae_lens expects ([batch, pos, d];
attention heads flattened to n_heads * d_head) and optionally editing activations at some hooks on the way
(an ablation: subtract a vector at chosen token positions, read a later hook). The forward pass stops as
soon as every requested activation is captured.

One registry, RESOLVERS, maps a model architecture to a resolver (hook name → Site): TransformerLens
`HookedTransformer` (its own hook points) and Hugging Face BERT (MiniLM) through forward hooks on its
modules; docs/design.md ("Hooks on a post-LN BERT") says what each hook means there.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

Edit = Callable[[torch.Tensor], torch.Tensor]
"""An intervention: the activation at a hook [batch, pos, d] → the value that flows on (same shape)."""


class HookError(ValueError):
    """A hook name the model does not have (or that did not fire): the message names it."""


@dataclass(frozen=True)
class Site:
    """Where a hook's activation lives: a module's output, or its first input ("in"), optionally with
    heads [batch, pos, n_heads, d_head] to flatten."""

    module: nn.Module
    where: str = "out"
    heads: bool = False


_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _transformer_lens(model, hook: str) -> Site:
    point = model.hook_dict.get(hook)
    if point is None:
        raise HookError(f"hook {hook!r}: the model has no such hook point (see model.hook_dict)")
    # q, k, v and z are [batch, pos, head, d_head]; sae_lens reads them with the heads flattened
    return Site(point, "out", heads=hook.rsplit(".", 1)[-1] in ("hook_z", "hook_q", "hook_k", "hook_v"))


# BERT is post-LN: each sub-layer's output is added to the residual and then layer-normed. docs/design.md
# ("Hooks on a post-LN BERT") explains each choice; values are [batch, pos, d] everywhere.
_BERT = {
    "hook_resid_pre": lambda layer: Site(layer, "in"),  # the block's input: the previous block's output
    "hook_resid_post": lambda layer: Site(layer, "out"),  # the block's output (hidden_states[L + 1])
    "hook_resid_mid": lambda layer: Site(layer.attention.output, "out"),  # LN(x + attn_out): the MLP's input
    "hook_attn_out": lambda layer: Site(layer.attention.output.dense, "out"),  # before the add + LN
    "attn.hook_z": lambda layer: Site(layer.attention.output.dense, "in"),  # per-head context, heads flattened
    "hook_mlp_in": lambda layer: Site(layer.intermediate, "in"),
    "ln2.hook_normalized": lambda layer: Site(layer.intermediate, "in"),  # = resid_mid, LN's affine included
    "mlp.hook_pre": lambda layer: Site(layer.intermediate.dense, "out"),
    "mlp.hook_post": lambda layer: Site(layer.intermediate, "out"),  # after GELU
    "hook_mlp_out": lambda layer: Site(layer.output.dense, "out"),  # before the add + LN
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
    """The RESOLVERS key for a model: TransformerLens models by their hook points, HF ones by model_type."""
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
    """An edit that subtracts `vector` [d] at the token positions where `positions` [batch, pos] is True."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        return x - positions.to(x.device).unsqueeze(-1).to(x.dtype) * vector.to(x.device, x.dtype)
    return edit


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

    @torch.no_grad()
    def run(self, inputs: torch.Tensor | Mapping[str, torch.Tensor], capture=(),
            edit: Mapping[str, Edit] | None = None) -> dict[str, torch.Tensor]:
        """Activations {hook: [batch, pos, d]} at each `capture` hook, with each `edit` applied at its hook
        first (a capture at an edited hook sees the edited value). `inputs`: token ids [batch, pos] or the
        model's keyword inputs (input_ids, attention_mask). Stops once every capture is taken."""
        capture, edit = list(dict.fromkeys(capture)), dict(edit or {})
        sites = {h: self.site(h) for h in [*capture, *edit]}
        got: dict[str, torch.Tensor] = {}
        handles = []

        def make(hook: str, site: Site):
            def apply(x: torch.Tensor) -> torch.Tensor | None:
                shape = x.shape
                flat = x.flatten(-2) if site.heads else x
                changed = None
                if hook in edit:
                    flat = edit[hook](flat)
                    changed = flat.reshape(shape)
                if hook in capture:
                    got[hook] = flat.detach()
                    if len(got) == len(capture):
                        raise _Stop
                return changed

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
        try:
            self._forward(inputs)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [h for h in capture if h not in got]
        if missing:
            raise HookError(f"hook {missing[0]!r} did not fire in the forward pass (is it enabled in this model?)")
        return got

    def _forward(self, inputs) -> None:
        if isinstance(inputs, torch.Tensor):
            inputs = {"input_ids": inputs}
        if self.arch == "transformer_lens":
            self.model(inputs["input_ids"], attention_mask=inputs.get("attention_mask"), return_type=None)
        else:
            self.model(**inputs)
