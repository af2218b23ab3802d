"""The package as a user gets it: `atlas --version`, and the metadata pyproject.toml declares."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
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
