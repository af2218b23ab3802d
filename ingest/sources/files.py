"""Tensor and config file loading with errors that name the file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from atlas.sae import SAEError, as_f32


def load_json(path: Path) -> dict:
    """A JSON config file that must hold an object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SAEError(f"{path}: config file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise SAEError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise SAEError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def load_torch(path: Path) -> dict[str, np.ndarray]:
    """A torch state dict (.pt) as float32 numpy, loaded with weights_only (no pickled code runs)."""
    import pickle

    import torch

    if not path.is_file():
        raise SAEError(f"{path}: weights file missing")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SAEError(f"{path}: not a readable torch state dict (truncated or corrupt?): {first}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SAEError(f"{path}: expected a state dict of tensors")
    return {k: as_f32(v.float().numpy(), str(path), k) for k, v in sd.items()}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32 numpy (bf16/fp16 included)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise SAEError(f"{path}: weights file missing")
    try:
        _sample_decoder(path)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SAEError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return {k: as_f32(v.float().numpy(), str(path), k) for k, v in tensors.items()}


SAMPLE_ROWS = 64


def _sample_decoder(path: Path) -> None:
    """Before reading a whole file: its header (shapes, offsets; safetensors checks them against the file size)
    and SAMPLE_ROWS random decoder rows. All of them zero means far more than atlas.sae's MAX_DEAD_ROWS are
    dead (at most half dead, all 64 zero has odds below 2^-64): refused in milliseconds, not after reading GBs."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        if "W_dec" not in f.keys():
            return
        rows = f.get_slice("W_dec")
        shape = rows.get_shape()
        if len(shape) != 2 or shape[0] <= SAMPLE_ROWS:
            return
        picks = np.random.default_rng(0).choice(shape[0], SAMPLE_ROWS, replace=False)
        if not any(rows[int(i):int(i) + 1].any() for i in picks):
            raise SAEError(f"{path}: tensor W_dec has {SAMPLE_ROWS} of {SAMPLE_ROWS} sampled decoder rows all zero "
                           f"(of {shape[0]}): an untrained or broken file")


def _sample_npz_decoder(path: Path) -> None:
    """The same check for an .npz whose W_dec is stored uncompressed (np.savez): its .npy header gives shape
    and dtype, and the rows are read in place (a compressed member would have to be inflated whole)."""
    import struct

    with zipfile.ZipFile(path) as z:
        info = next((i for i in z.infolist() if i.filename == "W_dec.npy"), None)
    if info is None or info.compress_type != zipfile.ZIP_STORED:
        return
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        fmt = np.lib.format
        header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
        if header is None:
            return
        shape, fortran, dtype = header(f)
        start = f.tell()
    if len(shape) != 2 or shape[0] <= SAMPLE_ROWS or fortran or dtype.hasobject:
        return
    rows = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
    picks = np.random.default_rng(0).choice(shape[0], SAMPLE_ROWS, replace=False)
    if not rows[np.sort(picks)].any():
        raise SAEError(f"{path}: tensor W_dec has {SAMPLE_ROWS} of {SAMPLE_ROWS} sampled decoder rows all zero "
                       f"(of {shape[0]}): an untrained or broken file")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise SAEError(f"{path}: weights file missing")
    try:
        _sample_npz_decoder(path)
        with np.load(path, allow_pickle=False) as z:
            return {k: as_f32(z[k], str(path), k) for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise SAEError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from None


def need(tensors: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    if name not in tensors:
        raise SAEError(f"{path}: tensor {name!r} missing (found: {', '.join(sorted(tensors)) or 'none'})")
    return tensors[name]
