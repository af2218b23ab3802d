"""The package as a user gets it: the wheel built from the sdist, installed into a fresh venv and run from
outside the checkout; its import names (docs/design.md, Package names); `atlas --version`; its metadata."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import atlas
from atlas.store.schema import MIGRATIONS, SCHEMA_VERSION
from cli import main
from cli.group import checkout_commit

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GIT = shutil.which("git")  # the clone itself came from git (tests/test_fresh.py, BASE)
# import name -> the repository folder it installs from (pyproject.toml's package-dir)
NAMES = {"atlas": "atlas", "atlas_api": "api", "atlas_ingest": "ingest", "atlas_cli": "cli"}
OLD = ("api", "ingest", "cli")  # the folders' own names: other distributions install modules by those names
SCANNED = ("atlas", "api", "ingest", "cli", "bench", "tests")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_version_names_package_commit_and_schema():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"feature-atlas {atlas.__version__}"
    assert lines[-1] == (f"atlas schema: writes and serves version {SCHEMA_VERSION}; upgrades versions "
                         f"{min(MIGRATIONS) - 1}-{SCHEMA_VERSION - 1} in place (`atlas migrate`, or any job)")
    if GIT and (ROOT / ".git").exists():  # a checkout: the commit it runs from (an unpacked sdist has none)
        sha = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        assert lines[1] == f"commit {sha}" + (" with uncommitted changes" if dirty else "")
    # --version answers without an atlas: it is eager, before the group opens one
    assert "atlas.duckdb" not in r.output


@pytest.mark.skipif(GIT is None, reason="no git program")
def test_a_commit_only_for_the_top_of_a_work_tree(tmp_path):
    """A wheel installed into a venv that sits inside some checkout must not print that checkout's commit."""
    assert checkout_commit(tmp_path / "atlas") is None  # not a git work tree
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "atlas").mkdir()
    assert checkout_commit(tmp_path / "atlas") is None  # a work tree with no commit yet
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert checkout_commit(tmp_path / "atlas") == head
    nested = tmp_path / ".venv" / "lib" / "site-packages" / "atlas"
    nested.mkdir(parents=True)
    assert checkout_commit(nested) is None
    (tmp_path / "tracked").write_text("a")
    subprocess.run(["git", "-C", str(tmp_path), "add", "tracked"], check=True)
    assert checkout_commit(tmp_path / "atlas") == f"{head} with uncommitted changes"


def test_metadata_an_index_expects():
    project = PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "atlas.__version__"}
    assert project["readme"] == "README.md" and project["description"]
    assert project["license"] and project["requires-python"] == ">=3.11"
    assert "Typing :: Typed" in project["classifiers"] and (ROOT / "atlas" / "py.typed").exists()
    for pattern in project["license-files"]:
        assert list(ROOT.glob(pattern)), pattern


# ---- import names -------------------------------------------------------------------------------------------

def _ours(dotted: str) -> bool:
    """'ingest.jobs.demo.run_demo' names a module of ours: its second part is a module or package of that folder."""
    top, _, rest = dotted.partition(".")
    first = rest.split(".")[0]
    return top in OLD and bool(first) and ((ROOT / top / f"{first}.py").is_file()
                                           or (ROOT / top / first / "__init__.py").is_file())


IMPORT_LINE = re.compile(r"^\s*(?:from|import)\s+(api|ingest|cli)\b(?![\w-])", re.M)
DOTTED = re.compile(r"(?<![\w./-])(?:api|ingest|cli)(?:\.\w+)+")
DASH_M = re.compile(r"-m\s+(?:api|ingest|cli)\b(?![\w./-])")


def old_names(source: str) -> list[str]:
    """Every use of an old top-level name in a Python source: imports, and in strings a module path
    ('api.app:app_from_env', mock targets, forkserver preloads), a `-m` target or an import line of a script."""
    found, tree = [], ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in OLD]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module.split(".")[0] in OLD:
            found.append(f"from {node.module} import")
        elif isinstance(node, (ast.List, ast.Tuple)):  # [sys.executable, "-m", "cli", ...]
            values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            found += [f"-m {b}" for a, b in zip(values, values[1:]) if a == "-m" and b in OLD]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [m.group(0) for m in DOTTED.finditer(node.value) if _ours(m.group(0))]
            found += [m.group(0).strip() for m in IMPORT_LINE.finditer(node.value)]
            found += DASH_M.findall(node.value)
    return found


def test_the_check_sees_old_names_and_nothing_else():
    planted = ('import api\nfrom ingest.jobs import demo\nimport os, cli.group\n'
               'subprocess.run([sys.executable, "-m", "cli", "--help"])\n'
               'uvicorn.run("api.app:app_from_env")\nmock.patch("ingest.tasks.run_pair")\n'
               'SCRIPT = """\nfrom cli import main\n"""\nos.system("python -m cli --version")\n')
    assert sorted(old_names(planted)) == sorted(["import api", "from ingest.jobs import", "import cli.group", "-m cli",
                                                 "api.app", "ingest.tasks.run_pair", "from cli", "-m cli"])
    innocent = ('api = client\napi.get("/api/saes")\nx = "cli.duckdb"\ncmd = ["atlas", "ingest", "-r"]\n'
                'from atlas_api.app import create_app\nsubprocess.run([sys.executable, "-m", "atlas_cli"])\n'
                'uvicorn.run("atlas_api.app:app_from_env")\nfrom . import api\n')
    assert old_names(innocent) == []


def test_no_code_uses_the_old_top_level_names():
    """api, ingest and cli are installed as atlas_api, atlas_ingest, atlas_cli: an import (or a module path in a
    string) of an old name works from the checkout by accident and fails from the wheel. The rename command
    in docs/design.md (Package names) fixes what this finds."""
    offences = [f"{p.relative_to(ROOT)}: {name}" for d in SCANNED for p in sorted((ROOT / d).rglob("*.py"))
                if p != Path(__file__) for name in old_names(p.read_text())]  # this file plants them on purpose
    offences += [f"{f}: {m}" for f in ("Makefile", ".ci/run") for m in DASH_M.findall((ROOT / f).read_text())]
    assert offences == []


def test_pyproject_installs_every_folder_under_its_name():
    setuptools_ = PYPROJECT["tool"]["setuptools"]
    assert setuptools_["package-dir"] == {k: v for k, v in NAMES.items() if k != v}
    assert PYPROJECT["project"]["scripts"] == {"atlas": "atlas_cli:main"}
    folders = sorted(".".join((name, *d.relative_to(ROOT / folder).parts)) for name, folder in NAMES.items()
                     for d in (ROOT / folder, *(ROOT / folder).rglob("*")) if d.is_dir() and d.name != "__pycache__")
    assert sorted(setuptools_["packages"]) == folders, "rerun the rename command (docs/design.md, Package names)"


def test_the_names_import_from_this_checkout():
    """The tests test this checkout: an editable install of another checkout (a shared venv) would serve its
    api/, ingest/, cli/ under the new names while atlas/ came from here."""
    for name, folder in NAMES.items():
        spec = importlib.util.find_spec(name)
        where = Path(spec.origin).parent if spec and spec.origin else None
        assert where == ROOT / folder, (f"{name} imports from {where}, not {ROOT / folder}: "
                                        f"`make install` (pip install -e .) in this checkout")


# ---- the wheel, installed ----------------------------------------------------------------------------------

def _source_tree(dst: Path) -> Path:
    """A copy of what a clone has (tracked and new, not ignored, files), so the build writes nothing here."""
    try:
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                               capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: everything but build leftovers
        shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist"))
        return dst
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    return dst


def _fresh_venv(where: Path) -> Path:
    """A venv without pip whose site-packages points at this environment's (the dependencies are reused, the
    checkout and its editable install are not: a .pth line adds a path and runs none of the .pth files there)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # the project's venv may live inside the checkout (.venv): its site-packages is reused all the same; the
    # editable install there is a .pth file, which a path added by a .pth line never runs
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(purelib) / "feature-atlas-deps.pth").write_text("\n".join(ours) + "\n")
    return python


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_wheel_installed_elsewhere_serves_the_explorer(tmp_path):
    """The sdist carries what the wheel needs; the wheel, installed into a fresh venv and run from a folder
    outside the checkout, builds an atlas and serves the explorer, its static files and the OpenAPI docs."""
    pytest.importorskip("build", reason="the `build` frontend comes with the test extra (make install)")
    from bench.server import free_port

    src, dist = _source_tree(tmp_path / "src"), tmp_path / "dist"
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")  # the wheel is built from the sdist
    static = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "api" / "static").rglob("*") if p.is_file())
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert set(static) <= in_sdist and "atlas/py.typed" in in_sdist
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
    top = {n.split("/")[0] for n in in_wheel if not n.split("/")[0].endswith(".dist-info")}
    assert top == set(NAMES), f"top-level names in the wheel: {sorted(top)}"
    assert {"atlas_" + s for s in static} <= in_wheel and "atlas/py.typed" in in_wheel
    code = {f"{name}/{p.relative_to(ROOT / folder).as_posix()}" for name, folder in NAMES.items()
            for p in (ROOT / folder).rglob("*.py")}
    assert code <= in_wheel, sorted(code - in_wheel)

    python = _fresh_venv(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", "--no-compile", str(wheel)], check=True, timeout=300)
    user = tmp_path / "user"  # outside the checkout, and no PYTHONPATH: only the installed package is there
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATLAS_PATH")}
    atlas_cmd = [str(tmp_path / "venv" / "bin" / "atlas"), "--atlas", str(user / "atlas.duckdb")]

    def run(*args: str) -> str:
        r = subprocess.run([*atlas_cmd, *args], cwd=user, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    version = wheel.name.split("-")[1]
    assert run("--version").splitlines()[0] == f"feature-atlas {version}"
    assert "commit" not in run("--version")  # an installed wheel has no checkout
    where = subprocess.run([str(python), "-c", "import atlas, atlas_api, atlas_ingest, atlas_cli as m; "
                            "print(*(x.__file__ for x in (atlas, atlas_api, atlas_ingest, m)))"],
                           cwd=user, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(f).is_relative_to(tmp_path / "venv") for f in where), where
    assert "wrote 2 SAEs" in run("synth", "--out", "saes", "--d-in", "32", "--d-sae", "16", "--layers", "2",
                                 "--seeds", "1", "--no-second-dataset", "--widths", "")

    port = free_port()
    server = subprocess.Popen([*atlas_cmd, "serve", "--port", str(port)], cwd=user, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, "atlas serve did not answer /health in 120 s"
            time.sleep(0.3)
        assert _get(base + "/") == (200, (ROOT / "api" / "static" / "index.html").read_bytes())
        assert _get(base + "/static/app.js") == (200, (ROOT / "api" / "static" / "app.js").read_bytes())
        status, docs = _get(base + "/schema")
        assert status == 200
        vendored = re.findall(r'src="(/static/vendor/[^"]+\.js)"', docs.decode())
        assert vendored and all(_get(base + v)[0] == 200 for v in vendored)  # the docs work offline
        status, saes = _get(base + "/api/saes")
        assert status == 200 and saes.count(b'"synth-') >= 2
    finally:
        server.terminate()
        server.wait(timeout=30)
