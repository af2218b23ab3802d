"""Issue 31 item 6: every file a reader opens is read bounded, and every config field typed, with one line
naming the file (and the field); nothing hangs, nothing reads without end, nothing inflates unchecked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from atlas.sae import INT32, MAX_ID, MAX_TEXT, SAEError
from atlas.store import Atlas
from atlas_cli import main
from atlas_ingest.sources import read_sae
from atlas_ingest.sources.files import MAX_CONFIG_BYTES, load_npz, load_torch

from .test_ingest_errors import _weights


# --- one folder per layout, each with the config and weight files its reader opens ----------------------------

def saelens(folder: Path, cfg: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_weights(), str(folder / "sae_weights.safetensors"))
    save_file({"sparsity": np.full(16, -2.0, np.float32)}, str(folder / "sparsity.safetensors"))
    base = {"d_in": 8, "d_sae": 16, "architecture": "jumprelu",
            "metadata": {"model_name": "m", "hook_name": "blocks.1.hook_resid_post"}}
    (folder / "cfg.json").write_text(json.dumps(base if cfg is None else cfg))
    return folder


def gemmascope_npz(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **_weights())
    return folder


def gemmascope_v2(folder: Path, cfg: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_weights(), str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg or {"model_name": "g", "hook_name": "blocks.2.hook_resid_post"}))
    return folder


def sparsify(run: Path, cfg: dict | None = None, run_cfg: dict | None = None) -> Path:
    folder = run / "layers.2.mlp"
    folder.mkdir(parents=True, exist_ok=True)
    w = _weights()
    save_file({"encoder.weight": np.ascontiguousarray(w["W_enc"].T), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "num_latents": 16, "k": 4, "d_in": 8, **(cfg or {})}))
    (run / "config.json").write_text(json.dumps({"sae": {}, "model": "m", "dataset": "d", "init_seeds": [1],
                                                 **(run_cfg or {})}))
    return folder


def dictionary_learning(folder: Path, trainer: dict | None = None, raw: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = _weights()
    torch.save({"encoder.weight": torch.from_numpy(w["W_enc"].T.copy()), "encoder.bias": torch.from_numpy(w["b_enc"]),
                "decoder.weight": torch.from_numpy(w["W_dec"].T.copy()), "bias": torch.from_numpy(w["b_dec"])},
               folder / "ae.pt")
    t = {"dict_class": "AutoEncoder", "activation_dim": 8, "dict_size": 16, "layer": 3, "lm_name": "org/m", "seed": 0,
         **(trainer or {})}
    (folder / "config.json").write_text(raw if raw is not None else json.dumps({"trainer": t}))
    return folder


# (layout, builder, the file of it that is replaced) — every file any reader opens
FILES = [
    ("saelens", saelens, "cfg.json"), ("saelens", saelens, "sae_weights.safetensors"),
    ("saelens", saelens, "sparsity.safetensors"), ("gemmascope", gemmascope_npz, "params.npz"),
    ("gemmascope", gemmascope_v2, "config.json"), ("gemmascope", gemmascope_v2, "params.safetensors"),
    ("sparsify", lambda f: sparsify(f), "cfg.json"), ("sparsify", lambda f: sparsify(f), "sae.safetensors"),
    ("dictionary_learning", dictionary_learning, "config.json"), ("dictionary_learning", dictionary_learning, "ae.pt"),
]


@pytest.fixture
def no_hang():
    """A read that blocks (main: open() of a FIFO) fails the test after 10 s instead of hanging it."""
    def stop(*_):
        raise TimeoutError("the read blocked")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _fifo(p: Path):
    os.mkfifo(p)


def _device(p: Path):
    os.symlink("/dev/null", p)


def _folder(p: Path):
    p.mkdir()


@pytest.mark.parametrize("make, kind", [(_fifo, "a FIFO"), (_device, "a character device"), (_folder, "a folder")])
@pytest.mark.parametrize("layout, build, name", FILES, ids=[f"{lay}-{name}" for lay, _, name in FILES])
def test_every_file_a_reader_opens_must_be_a_regular_file(tmp_path, no_hang, layout, build, name, make, kind):
    """main: a FIFO cfg.json blocked forever (holding the atlas's write lock); weights that were not regular
    files read as 'missing'; a folder cfg.json gave 'Is a directory' without saying what was expected."""
    folder = build(tmp_path / "sae")
    (folder / name).unlink()
    make(folder / name)
    with pytest.raises(SAEError) as e:
        read_sae(folder, fmt=layout, layer=1 if layout == "gemmascope" else None)
    what = "config file" if name.endswith(".json") else "weights file"
    assert str(e.value) == f"{folder / name}: {what} is {kind}, not a regular file"


def test_sparsify_run_config_that_is_not_a_file_is_skipped(tmp_path, no_hang):
    """The run's config.json is optional (a bare SAE folder has none): a FIFO there is passed over, unread."""
    folder = sparsify(tmp_path / "run")
    (tmp_path / "run" / "config.json").unlink()
    os.mkfifo(tmp_path / "run" / "config.json")
    assert read_sae(folder).meta.release is None


_UNBOUNDED = r"""
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from atlas.sae import SAEError
from atlas_ingest.sources.files import load_json
try:
    load_json(Path(sys.argv[1]))
    print("read")
except SAEError as e:
    print(e)
"""


def test_a_config_that_is_a_device_of_endless_bytes_is_refused_unread(tmp_path):
    """cfg.json → /dev/zero: main read until MemoryError (here capped at 3 GB of address space)."""
    os.symlink("/dev/zero", tmp_path / "cfg.json")
    out = subprocess.run([sys.executable, "-c", _UNBOUNDED, str(tmp_path / "cfg.json")], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert out.stdout.strip() == f"{tmp_path / 'cfg.json'}: config file is a character device, not a regular file", out


def test_a_config_past_the_size_cap_is_refused(tmp_path):
    folder = saelens(tmp_path / "big")
    cfg = folder / "cfg.json"
    cfg.write_text(cfg.read_text() + " " * MAX_CONFIG_BYTES)  # valid JSON, 1 MiB of trailing blanks
    with pytest.raises(SAEError, match=r"big/cfg.json: config file is larger than 1024 KiB; no SAE config is"):
        read_sae(folder)


# --- archives: members checked against their headers before they are inflated ------------------------------

def _deflated(path: Path, members: dict[str, bytes | tuple[bytes, int]]):
    """A zip of deflated members; a (header, n) member is header + n zero bytes, streamed (no n-byte buffer)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            if isinstance(body, bytes):
                z.writestr(name, body)
                continue
            head, n = body
            with z.open(name, "w", force_zip64=True) as f:
                f.write(head)
                block = bytes(1 << 22)
                while n > 0:
                    f.write(block[:min(n, len(block))])
                    n -= len(block)


def _npy(a=None, shape=None) -> bytes:
    import io

    buf = io.BytesIO()
    if a is not None:
        np.save(buf, a)
    else:
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_npz_zip_bomb_is_refused_before_inflating(tmp_path):
    """A 64 KB params.npz whose W_dec inflates to 64 MB of zeros (main: inflated whole, then a shape refusal;
    the issue's 1.7 MB one reached 2.8 GB)."""
    w = _weights()
    rows = (64 << 20) // 32
    _deflated(tmp_path / "params.npz", {**{f"{k}.npy": _npy(v) for k, v in w.items() if k != "W_dec"},
                                        "W_dec.npy": (_npy(shape=(rows, 8)), rows * 32)})
    assert (tmp_path / "params.npz").stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(SAEError, match=r"params.npz: member W_dec.npy inflates to 67,108,992 bytes from [\d,]+ "
                                           r"\([\d,]+:1; trained weights deflate less than 8:1\): a zip bomb"):
            load_npz(tmp_path / "params.npz")
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_npz_member_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    """A deflated W_dec whose .npy header says 700M rows while the member holds 16 (main: numpy allocated the
    22 GB array for it, then failed reading)."""
    w = _weights()
    _deflated(tmp_path / "params.npz", {**{f"{k}.npy": _npy(v) for k, v in w.items() if k != "W_dec"},
                                        "W_dec.npy": _npy(shape=(700_000_000, 8)) + w["W_dec"].tobytes()})
    with pytest.raises(SAEError, match=r"params.npz: member W_dec.npy declares float32 \[700000000, 8\] "
                                       r"\(22,400,000,128 bytes\) but holds 640 bytes: truncated or forged"):
        load_npz(tmp_path / "params.npz")


def test_compressed_npz_of_real_weights_still_loads(tmp_path):
    w = {k: np.random.default_rng(0).standard_normal(v.shape).astype(np.float32) for k, v in _weights(64, 4096).items()}
    np.savez_compressed(tmp_path / "params.npz", **w)  # W_dec of 1 MiB+ deflates ≈ 1.1:1
    got = load_npz(tmp_path / "params.npz")
    assert set(got) == set(w) and all(np.array_equal(got[k], w[k]) for k in w)


def test_a_zipped_pt_that_is_a_bomb_is_refused_before_torch_inflates_it(tmp_path):
    """torch.load reads deflated members as well: a .pt rewritten deflated from 64 MB of zeros (main: loaded)."""
    torch.save({"decoder.weight": torch.zeros(8, (64 << 20) // 32)}, tmp_path / "plain.pt")
    with zipfile.ZipFile(tmp_path / "plain.pt") as src, zipfile.ZipFile(tmp_path / "ae.pt", "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(SAEError, match=r"ae.pt: member .*/data/0 inflates to 67,108,864 bytes .* a zip bomb"):
        load_torch(tmp_path / "ae.pt")


# --- config fields: typed by each reader's schema, one line naming the file and the field ---------------------

def _md(**kw):
    return {"d_in": 8, "d_sae": 16, "architecture": "jumprelu",
            "metadata": {"model_name": "m", "hook_name": "blocks.1.hook_resid_post", **kw}}


DEEP = "[" * 200_000 + "]" * 200_000

CONFIGS = [  # (builder of the bad folder, its config file relative to the folder, the line's tail); main's answer
    (lambda f: saelens(f, {**_md(), "metadata": [1, 2]}), "cfg.json",
     "field metadata: expected object, got array"),  # TypeError
    (lambda f: saelens(f, _md(hook_name=5)), "cfg.json", "field metadata.hook_name: expected str, got int"),  # TypeError
    (lambda f: (saelens(f), (f / "cfg.json").write_text(DEEP), f)[-1], "cfg.json",
     "not valid JSON (nested too deeply)"),  # RecursionError
    (lambda f: saelens(f, _md(seed=1e40)), "cfg.json", "field metadata.seed: expected int, got float"),  # DuckDB
    (lambda f: saelens(f, _md(seed=10**40)), "cfg.json", "field metadata.seed: expected int <= 2147483647"),  # Overflow
    (lambda f: saelens(f, _md(seed="zero")), "cfg.json", "field metadata.seed: expected int, got str"),  # "aborted"
    (lambda f: saelens(f, _md(seed=True)), "cfg.json", "field metadata.seed: expected int, got bool"),  # stored 1
    (lambda f: saelens(f, _md(dataset_path="d" * 100_000)), "cfg.json",
     f"field metadata.dataset_path: expected str of length <= {MAX_TEXT}"),  # OSError: File name too long
    (lambda f: saelens(f, {**_md(), "d_in": "abc"}), "cfg.json", "field d_in: expected int, got str"),  # no file
    (lambda f: saelens(f, {**_md(), "architecture": ["jumprelu"]}), "cfg.json",
     "field architecture: expected str, got array"),  # TypeError
    (lambda f: saelens(f, {**_md(), "activation_fn_kwargs": [4]}), "cfg.json",
     "field activation_fn_kwargs: expected object, got array"),  # AttributeError
    (lambda f: saelens(f, _md(neuronpedia_id=7)), "cfg.json", "field metadata.neuronpedia_id: expected str, got int"),
    (lambda f: (saelens(f), (f / "cfg.json").write_text('{"seed": ' + "9" * 5000 + "}"), f)[-1], "cfg.json",
     "not valid JSON (Exceeds the limit (4300 digits)"),
    (lambda f: dictionary_learning(f, {"layer": 1e20}), "config.json",
     "field trainer.layer: expected int, got float"),  # DuckDB "transaction is aborted"
    (lambda f: dictionary_learning(f, {"layer": 10**20}), "config.json",
     "field trainer.layer: expected int <= 2147483647"),  # OverflowError
    (lambda f: dictionary_learning(f, {"lm_name": {"a": 1}}), "config.json",
     "field trainer.lm_name: expected str, got object"),  # AttributeError
    (lambda f: dictionary_learning(f, {"activation_dim": "x"}), "config.json",
     "field trainer.activation_dim: expected int, got str"),  # no file
    (lambda f: sparsify(f, {"num_latents": "x"}).parent, "layers.2.mlp/cfg.json",
     "field num_latents: expected int, got str"),  # no file
    (lambda f: sparsify(f, {"k": 2.5}).parent, "layers.2.mlp/cfg.json", "field k: expected int, got float"),  # stored 2
    (lambda f: sparsify(f, run_cfg={"init_seeds": ["a"]}).parent, "config.json",
     "field init_seeds[0]: expected int, got str"),  # DuckDB
    (lambda f: sparsify(f, run_cfg={"model": 5}).parent, "config.json", "field model: expected str, got int"),  # TypeError
    (lambda f: gemmascope_v2(f, {"hook_name": 7}), "config.json", "field hook_name: expected str, got int"),
]


@pytest.mark.parametrize("build, cfg, message", CONFIGS, ids=[m[:40] for _, _, m in CONFIGS])
def test_config_fields_are_typed_with_one_line_naming_file_and_field(tmp_path, build, cfg, message):
    atlas = str(tmp_path / "a.duckdb")
    folder = build(tmp_path / "bad")
    r = CliRunner().invoke(main, ["--atlas", atlas, "ingest", "-r", str(folder), "--layer", "1"])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: {folder / cfg}: {message}"), r.output
    if Path(atlas).exists():
        with Atlas(atlas).read() as con:
            assert con.execute("SELECT count(*) FROM saes").fetchone() == (0,)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "d" * 100_000], f"dataset is 100,000 characters long (at most {MAX_TEXT})"),  # main: OSError
    (["--hook", "blocks.1." + "h" * 5000], f"hook is 5,009 characters long (at most {MAX_TEXT})"),
    (["--layer", str(10**20)], f"layer 100000000000000000000 is out of range (-1 to {INT32[1]})"),  # OverflowError
    (["--layer", "-7"], f"layer -7 is out of range (-1 to {INT32[1]})"),
    (["--seed", str(2**40)], f"seed 1099511627776 is out of range ({INT32[0]} to {INT32[1]})"),  # DuckDB "aborted"
    (["--id", "i" * 1000], f"SAE id {'i' * 40}… is 1,000 characters long (at most {MAX_ID}); pass a shorter --id"),
    (["--id", "///"], "SAE id has no letter or digit; pass --id"),  # main: stored under the empty id
])
def test_command_line_metadata_is_bounded_too(tmp_path, args, message):
    folder = saelens(tmp_path / "sae")
    r = CliRunner().invoke(main, ["--atlas", str(tmp_path / "a.duckdb"), "ingest", str(folder), *args])
    assert r.exit_code == 2 and r.output == f"error: {folder}: {message}\n", r.output


# Any JSON value in any field a reader reads: the SAE is read with typed metadata, or refused by an SAEError
# naming the config file; never another exception, and nothing that the saes table could not store.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30)
    | st.sampled_from(["", "x" * (MAX_TEXT + 1), "blocks.3.hook_resid_post", "topk", "jumprelu", "AutoEncoder"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
_SAELENS = ["d_in", "d_sae", "architecture", "activation_fn_str", "activation_fn_kwargs", "k", "metadata",
            "apply_b_dec_to_input", "rescale_acts_by_decoder_norm", "model_name", "hook_name", "seed", "dataset_path",
            "metadata.model_name", "metadata.hook_name", "metadata.hook_name_out", "metadata.seed",
            "metadata.dataset_path", "metadata.neuronpedia_id", "activation_fn_kwargs.k"]
_TRAINER = ["trainer", "trainer.dict_class", "trainer.activation_dim", "trainer.dict_size", "trainer.k", "trainer.layer",
            "trainer.lm_name", "trainer.submodule_name", "trainer.seed"]


def _put(cfg: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = cfg
    for p in parents:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[last] = value
    return cfg


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {"saelens": saelens(root / "saelens"), "dictionary_learning": dictionary_learning(root / "trainer_0")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_in_any_config_field_is_read_typed_or_refused_by_name(layouts, data):
    layout = data.draw(st.sampled_from(sorted(layouts)))
    folder = layouts[layout]
    fields = data.draw(st.lists(st.sampled_from(_SAELENS if layout == "saelens" else _TRAINER), min_size=1, max_size=3))
    if layout == "saelens":
        cfg, name = _md(), "cfg.json"
    else:
        cfg, name = {"trainer": {"dict_class": "AutoEncoder", "activation_dim": 8, "dict_size": 16, "layer": 3,
                                 "lm_name": "org/m"}}, "config.json"
    for f in fields:
        _put(cfg, f, data.draw(_JSON, label=f))
    (folder / name).write_text(json.dumps(cfg))
    try:
        m = read_sae(folder, layer=None).meta
    except SAEError as e:
        assert str(e).startswith(str(folder)) and "\n" not in str(e)
        return
    for field in ("layer", "seed", "k", "d_in", "d_sae"):
        v = getattr(m, field)
        assert v is None or (type(v) is int and INT32[0] <= v <= INT32[1]), (field, v)
    for field in ("model", "hook", "dataset", "neuronpedia_id", "hook_out"):
        v = getattr(m, field)
        assert v is None or (isinstance(v, str) and len(v) <= MAX_TEXT), (field, v)
    assert 0 < len(m.sae_id) <= MAX_ID
