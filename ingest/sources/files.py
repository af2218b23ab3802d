"""Tensor and config file loading with errors that name the file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from atlas.sae import SAEError, as_f32


def load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SAEError(f"{path}: config file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEError(f"{path}: not valid JSON ({e})") from None


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32 numpy (bf16/fp16 included)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SAEError(f"{path}: weights file missing")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SAEError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return {k: as_f32(v.float().numpy(), str(path), k) for k, v in tensors.items()}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise SAEError(f"{path}: weights file missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: as_f32(z[k], str(path), k) for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise SAEError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from None


def need(tensors: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    if name not in tensors:
        raise SAEError(f"{path}: tensor {name!r} missing (found: {', '.join(sorted(tensors)) or 'none'})")
    return tensors[name]
