"""Text corpora that ship with Python: English prose (pydoc topics + stdlib docstrings) and Python source.

Both are lists of documents; any other text files can stand in (`files_corpus`) for users with data.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from pathlib import Path

CORPORA = ("prose", "code")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


def prose() -> list[str]:
    """pydoc's help topics, then the docstrings of the standard library (modules, classes, functions)."""
    import pydoc_data.topics

    docs = [t for t in pydoc_data.topics.topics.values() if t.strip()]
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    docs.append(doc)
    return docs


def code() -> list[str]:
    """The standard library's Python source files."""
    out = []
    for path in _stdlib_files():
        try:
            out.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    return out


def files_corpus(paths: list[Path]) -> list[str]:
    return [Path(p).read_text(encoding="utf-8", errors="replace") for p in paths]


@functools.lru_cache(maxsize=2)
def _shipped(name: str) -> tuple[str, ...]:
    """The shipped corpora, built once per process (parsing the standard library takes seconds)."""
    return tuple(prose() if name == "prose" else code())


def load(name: str) -> list[str]:
    if name in CORPORA:
        return list(_shipped(name))
    path = Path(name)
    if path.is_dir():
        return files_corpus(sorted(p for p in path.rglob("*") if p.is_file()))
    if path.is_file():
        return files_corpus([path])
    raise ValueError(f"unknown corpus {name!r}: prose, code, or a text file / folder")
