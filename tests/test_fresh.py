"""A fresh machine runs `make test` with nothing installed by hand.

Every program the code looks up by name (`shutil.which(NAME)`, `subprocess.run([NAME, ...])`, across atlas/,
ingest/, api/, bench/ and tests/) must come from somewhere a fresh clone gets it: the venv (a pip package
of pyproject.toml's extras), the base system (named below with the reason), or a Makefile target that
`make test` reaches (`make bench` for bench/ code). Makefile targets install system packages only as root,
so a test that needs one also skips, with a reason, where it is missing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("atlas", "ingest", "api", "bench", "tests")
RUNNERS = {"run", "Popen", "call", "check_call", "check_output"}
BASE = {"git": "the clone itself came from git (bench JSON records the commit)"}
VENV = {"duckdb": "duckdb-cli"}  # program -> the pip package (a pyproject extra) that puts it in .venv/bin


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _which(node) -> str | None:
    """'x' for a call shutil.which('x', ...) or which('x', ...)."""
    if isinstance(node, ast.Call) and node.args and (
            isinstance(node.func, ast.Attribute) and node.func.attr == "which" or
            isinstance(node.func, ast.Name) and node.func.id == "which"):
        return _literal(node.args[0])
    return None


def looked_up(source: str) -> list[tuple[str, ...]]:
    """The programs a Python source asks for by name, as groups of alternatives
    (`which("chromium") or which("chromium-browser")` is one group: either will do)."""
    tree = ast.parse(source)
    groups, grouped = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            names = [_which(v) for v in node.values]
            if any(names):
                groups.append(tuple(n for n in names if n))
                grouped.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        if id(node) in grouped or not isinstance(node, ast.Call):
            continue
        if name := _which(node):
            groups.append((name,))
        func = node.func
        runner = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if runner in RUNNERS and node.args and isinstance(node.args[0], (ast.List, ast.Tuple)) and node.args[0].elts:
            if name := _literal(node.args[0].elts[0]):
                groups.append((name,))
    return groups


def makefile_rules(text: str) -> dict[str, tuple[list[str], str]]:
    """target -> (prerequisites, recipe text)."""
    rules: dict[str, tuple[list[str], str]] = {}
    current = None
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("\t") and current:
            rules[current][1].append(line)
        elif m := re.match(r"^([A-Za-z0-9_./$()-]+):(?!=)([^#]*)", line):
            current = m.group(1)
            rules[current] = (m.group(2).split(), [])
        elif line.strip() and not line.startswith("#"):
            current = None
    return {t: (pre, "\n".join(recipe)) for t, (pre, recipe) in rules.items()}


def provided_by(makefile: str, goal: str) -> set[str]:
    """Programs that targets reached from `goal` install (`apt-get install ... x`)."""
    rules = makefile_rules(makefile)
    seen, todo, out = set(), [goal], set()
    while todo:
        t = todo.pop()
        if t in seen or t not in rules:
            continue
        seen.add(t)
        pre, recipe = rules[t]
        todo += pre
        for m in re.finditer(r"apt-get install((?:\s+[\w.+-]+)+)", recipe):
            out.update(w for w in m.group(1).split() if not w.startswith("-"))
    return out


def skips_with_reason(source: str) -> bool:
    return bool(re.search(r"(skipif\(|pytest\.skip\(|importorskip\()[^)]*reason", source, re.S))


def unprovided(files: dict[str, str], makefile: str, pyproject: str) -> list[str]:
    """One line per program a file looks up that a fresh machine would not have after `make test`."""
    for_test, for_bench = provided_by(makefile, "test"), provided_by(makefile, "bench")
    out = []
    for path, source in sorted(files.items()):
        for group in looked_up(source):
            if any(p in BASE or p in VENV and VENV[p] in pyproject for p in group):
                continue
            made = for_test | (for_bench if path.startswith("bench/") else set())
            if not any(p in made for p in group):
                out.append(f"{path}: {' or '.join(group)} is installed by no Makefile target that "
                           f"`make {'bench' if path.startswith('bench/') else 'test'}` reaches")
            elif path.startswith("tests/") and not skips_with_reason(source):
                out.append(f"{path}: {' or '.join(group)} comes from apt (root only), but the test does not skip "
                           f"with a reason without it")
    return out


def _repo_files() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))}


def test_every_program_the_code_looks_up_comes_with_make_test():
    files = _repo_files()
    found = {p for source in files.values() for g in looked_up(source) for p in g}
    assert {"chromium", "duckdb", "wrk", "git"} <= found  # the scan sees the lookups it is meant to see
    assert unprovided(files, (ROOT / "Makefile").read_text(), (ROOT / "pyproject.toml").read_text()) == []


def test_the_check_fails_on_a_program_nothing_provides():
    makefile, pyproject = (ROOT / "Makefile").read_text(), (ROOT / "pyproject.toml").read_text()
    run = 'import subprocess\nsubprocess.run(["wrk2", "-t2"], check=True)\n'
    assert unprovided({"atlas/x.py": run}, makefile, pyproject) == [
        "atlas/x.py: wrk2 is installed by no Makefile target that `make test` reaches"]
    which = 'import shutil\nWRK = shutil.which("wrk")\n'
    assert unprovided({"bench/x.py": which}, makefile, pyproject) == []  # `make bench` reaches `make wrk`
    assert unprovided({"atlas/x.py": which}, makefile, pyproject) != []  # `make test` does not
    no_wrk = re.sub(r"(?m)^wrk:.*\n(\t.*\n)*", "", makefile).replace(" wrk", "")
    assert unprovided({"bench/x.py": which}, no_wrk, pyproject) == [
        "bench/x.py: wrk is installed by no Makefile target that `make bench` reaches"]
    assert unprovided({"tests/x.py": 'import shutil\nshutil.which("duckdb")\n'}, makefile, 'x = ["duckdb"]') != []
    browser = 'import shutil\nC = shutil.which("chromium") or shutil.which("chromium-browser")\n'
    assert "does not skip" in unprovided({"tests/x.py": browser}, makefile, pyproject)[0]
    skipping = browser + 'import pytest\npytestmark = pytest.mark.skipif(C is None, reason="no chromium")\n'
    assert unprovided({"tests/x.py": skipping}, makefile, pyproject) == []


def test_ci_runs_exactly_make_test():
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith(("#", "set ", "cd "))]
    assert lines == ["make test"]
    test_rule = makefile_rules((ROOT / "Makefile").read_text())["test"]
    assert {"install", "browser"} <= set(test_rule[0]) and "pytest" in test_rule[1]
