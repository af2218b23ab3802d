"""Every file a reader opens, read bounded and checked, with errors that name the file (and field).

One helper per kind of file (docs/design.md, Ingest refusals): configs are regular files of at most
MAX_CONFIG_BYTES, parsed and then typed against the reader's schema (a msgspec Struct); weight files are
regular files whose archives (npz, a zipped .pt) are checked against their own headers before anything is
inflated; tensors come back as float32, or in their own dtype where they are not floating point, so that
`need` refuses a bool or integer weight by name.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np

from atlas.sae import INT32, MAX_TEXT, SAEError

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this is refused unread: sae_lens, sparsify and dictionary_learning write a few KB."""

MAX_ZIP_RATIO = 8
"""A zip member (npz, .pt) of more than ZIP_RATIO_FROM bytes that inflates more than this many times its stored
size is refused before it is inflated: trained float weights deflate to ≥ 1/2 (bf16 kept as float32)."""
ZIP_RATIO_FROM = 1 << 20

# Field types of the readers' config schemas: what the atlas stores them as (saes' INTEGER and VARCHAR columns).
Int32 = Annotated[int, msgspec.Meta(ge=INT32[0], le=INT32[1])]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT32[1])]
Layer = Annotated[int, msgspec.Meta(ge=-1, le=INT32[1])]  # -1: the embedding
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path: Path, mode: int, what: str) -> SAEError:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return SAEError(f"{path}: {what} is {kind}, not a regular file")


def regular_file(path: Path, what: str) -> int:
    """The size of `path`, a regular file (symlinks followed); SAEError naming it when it is missing or is a
    FIFO, a device or a folder, which a library would block on or read without end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SAEError(f"{path}: {what} missing") from None
    except OSError as e:
        raise SAEError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode, what)
    return st.st_size


def read_bounded(path: Path, what: str, limit: int) -> bytes:
    """At most `limit` bytes of a regular file. Opened non-blocking and checked on the open descriptor, so a
    FIFO (or a file swapped for one) never blocks and a device is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SAEError(f"{path}: {what} missing") from None
    except OSError as e:
        raise SAEError(f"{path}: cannot read ({e.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(path, mode, what)
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise SAEError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise SAEError(f"{path}: {what} is larger than {limit // 1024} KiB; no SAE config is")
    return data


def load_json(path: Path, schema: type[msgspec.Struct] | None = None) -> dict:
    """A JSON config file that must hold an object; with `schema`, every field it names typed by it."""
    raw = read_bounded(path, "config file", MAX_CONFIG_BYTES)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise SAEError(f"{path}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and an integer of more than 4300 digits
        raise SAEError(f"{path}: not valid JSON ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise SAEError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if schema is not None:
        check_config(data, schema, path)
    return data


def check_config(data: dict, schema: type[msgspec.Struct], where: Path | str) -> None:
    """SAEError naming `where` and the field when a field of `data` has another type or range than `schema`
    says (unknown fields are left alone: configs carry many the atlas does not read)."""
    try:
        msgspec.convert(data, schema)
    except msgspec.ValidationError as e:
        text, _, field = str(e).partition(" - at `$")
        text = text.replace("`", "").replace(" | null", "")
        raise SAEError(f"{where}: field {field.rstrip('`').lstrip('.') or '(top level)'}: "
                       f"{text[:1].lower()}{text[1:]}") from None


def _floats(a: np.ndarray) -> np.ndarray:
    """float32 for floating tensors; any other dtype (bool, int) kept, so `need` can refuse it by name (an
    integer buffer such as dictionary_learning's `k` is fine where it is not a weight)."""
    return np.ascontiguousarray(a, dtype=np.float32) if a.dtype.kind == "f" else np.asarray(a)


def _check_zip(path: Path, npy: bool) -> None:
    """Members of a zip archive (npz, a zipped .pt) against their headers, before anything is inflated: a
    member deflated more than MAX_ZIP_RATIO:1, or (npz) whose .npy header's shape and dtype disagree with
    the size the zip directory declares, is refused. Then np.load allocates no more than the archive holds."""
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if (info.compress_type != zipfile.ZIP_STORED and info.file_size > ZIP_RATIO_FROM
                        and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1)):
                    raise SAEError(f"{path}: member {info.filename} inflates to {info.file_size:,} bytes from "
                                   f"{info.compress_size:,} ({info.file_size // max(info.compress_size, 1):,}:1; trained "
                                   f"weights deflate less than {MAX_ZIP_RATIO}:1): a zip bomb or a broken file")
                if not npy or not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:  # inflates only the header's first bytes
                    shape, _, dtype = _npy_header(f, f"{path}: member {info.filename}")
                    expect = f.tell() + int(np.prod(shape, dtype=object)) * dtype.itemsize
                if expect != info.file_size:
                    raise SAEError(f"{path}: member {info.filename} declares {dtype} {list(shape)} ({expect:,} bytes) "
                                   f"but holds {info.file_size:,} bytes: truncated or forged")
    except SAEError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise SAEError(f"{path}: not a readable {'.npz' if npy else 'zip'} file (truncated or corrupt?): {e}") from None


def _npy_header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the .npy header at f's position, leaving f at the first data byte."""
    fmt = np.lib.format
    read = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
    if read is None:
        raise SAEError(f"{where}: .npy format version is not 1.0 or 2.0 (weights never need another)")
    return read(f)


def load_torch(path: Path) -> dict[str, np.ndarray]:
    """A torch state dict (.pt) as float32 numpy, loaded with weights_only (no pickled code runs)."""
    import pickle

    import torch

    regular_file(path, "weights file")
    if zipfile.is_zipfile(path):  # torch's own format since 1.6; it inflates deflated members too
        _check_zip(path, npy=False)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SAEError(f"{path}: not a readable torch state dict (truncated or corrupt?): {first}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise SAEError(f"{path}: expected a state dict of tensors")
    return {k: _floats((v.float() if v.is_floating_point() else v).numpy()) for k, v in sd.items()}


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32 numpy (bf16/fp16 included)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    regular_file(path, "weights file")
    try:
        _sample_decoder(path)
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SAEError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None
    return {k: _floats((v.float() if v.is_floating_point() else v).numpy()) for k, v in tensors.items()}


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
        shape, fortran, dtype = _npy_header(f, f"{path}: member W_dec.npy")
        start = f.tell()
    if len(shape) != 2 or shape[0] <= SAMPLE_ROWS or fortran or dtype.hasobject:
        return
    rows = np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
    picks = np.random.default_rng(0).choice(shape[0], SAMPLE_ROWS, replace=False)
    if not rows[np.sort(picks)].any():
        raise SAEError(f"{path}: tensor W_dec has {SAMPLE_ROWS} of {SAMPLE_ROWS} sampled decoder rows all zero "
                       f"(of {shape[0]}): an untrained or broken file")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The .npy members of an .npz (Gemma Scope's params.npz), after _check_zip; no pickles."""
    regular_file(path, "weights file")
    _check_zip(path, npy=True)
    try:
        _sample_npz_decoder(path)
        with np.load(path, allow_pickle=False) as z:
            names = [n[:-len(".npy")] for n in z.zip.namelist() if n.endswith(".npy")]
            return {k: _floats(z[k]) for k in names}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise SAEError(f"{path}: not a readable .npz file (truncated or corrupt?): {e}") from None


def need(tensors: dict[str, np.ndarray], name: str, path: Path) -> np.ndarray:
    """A weight tensor by name: present and floating point (a bool or integer W_dec is no SAE's)."""
    if name not in tensors:
        raise SAEError(f"{path}: tensor {name!r} missing (found: {', '.join(sorted(tensors)) or 'none'})")
    t = tensors[name]
    if t.dtype != np.float32:
        raise SAEError(f"{path}: tensor {name} has dtype {t.dtype}; SAE weights are floating point "
                       f"(float32, float16, bfloat16 or float64)")
    return t
