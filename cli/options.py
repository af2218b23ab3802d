"""What the commands share: the --executor/--address options and the executor they open, the --pairs choices and
SAE_A:SAE_B parameters, the score bar (--method/--tau/--quantile), options made from a parameter dataclass, and the
progress bar."""

from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager

import click


def executor_options(where: str | None = None):
    """--executor and --address: where tasks run (the atlas is written here either way)."""
    def decorate(f):
        f = click.option("--address", default=None,
                         help="Ray cluster: auto, ray://host:10001 [default: start a local one].")(f)
        return click.option("--executor", type=click.Choice(["in-process", "ray"]), default="in-process",
                            show_default=True, help=where)(f)
    return decorate


@contextmanager
def opened_executor(executor: str, address: str | None):
    """The executor of --executor/--address, closed (a local Ray cluster stopped) when the job ends."""
    from atlas_ingest.executors import make_executor

    ex = make_executor(executor, address)
    try:
        yield ex
    finally:
        ex.close()


class Selection(click.Choice):
    """--pairs: the pair selections (atlas.queries.selection.SELECTIONS), less those a command
    leaves out; read when a command parses or shows its help, so `atlas --help` stays light."""

    def __init__(self, leave_out: tuple[str, ...] = ()):
        self.leave_out = leave_out
        super().__init__(())

    @property
    def choices(self):
        from atlas.queries.selection import SELECTIONS

        return tuple(s for s in SELECTIONS if s not in self.leave_out)

    @choices.setter
    def choices(self, _):
        pass


class SAEPair(click.ParamType):
    """SAE_A:SAE_B, as the tuple (SAE_A, SAE_B)."""

    name = "text"

    def convert(self, value, param, ctx):
        a, colon, b = value.partition(":")
        if not (colon and a and b):
            self.fail(f"--pair takes SAE_A:SAE_B, got {value!r}", param, ctx)
        return a, b


def bar(total: int | None, desc: str, unit: str = "pair"):
    """A tqdm progress bar on stderr (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True)


def threshold_options(per_pair: bool = True):
    """--method (a choice of the method registry), --tau and, `per_pair`, --quantile: handed to the command as one
    checked `threshold` (atlas.methods.Threshold.of; neither tau nor quantile: the method's default bar)."""
    from atlas.methods import DEFAULT, METHODS, NAMES

    defaults = ", ".join(f"{n} {m.tau if m.tau is not None else f'quantile {m.quantile}'}" for n, m in METHODS.items())

    def decorate(f):
        @functools.wraps(f)
        def run(*args, method, tau, quantile=None, **kwargs):
            from atlas.methods import Threshold

            return f(*args, threshold=Threshold.of(method, tau, quantile, per_pair=per_pair), **kwargs)
        if per_pair:
            run = click.option("--quantile", type=float, default=None,
                               help="Per-pair bar instead of --tau: the best q of each layer pair's assigned scores.")(run)
        run = click.option("--tau", type=float, default=None,
                           help=f"Score bar: at least tau (similarities), at most (distances) [default: the method's: "
                                f"{defaults}].")(run)
        return click.option("--method", type=click.Choice(NAMES), default=DEFAULT, show_default=True,
                            help="Matching method (atlas.methods.METHODS).")(run)
    return decorate


def options_from(cls, *names: str, flags: dict[str, str] | None = None):
    """One option per field of the dataclass `cls` (those of `names`, or all), with the class's default and help:
    the field's docstring (SAELens's config style) or its metadata's "help"; a Literal type is a choice. The option
    is --name-with-dashes unless `flags` or the field's metadata "flag" names it."""
    import typing

    hints = typing.get_type_hints(cls)
    helps = field_docs(cls)
    chosen = [f for f in dataclasses.fields(cls) if not names or f.name in names]

    def decorate(f):
        for field in reversed(chosen):
            flag = (flags or {}).get(field.name) or field.metadata.get("flag") or "--" + field.name.replace("_", "-")
            many = isinstance(field.default, tuple)
            kind = hints[field.name]
            kind = click.Choice(typing.get_args(kind)) if typing.get_origin(kind) is typing.Literal else \
                None if many else type(field.default)
            f = click.option(flag, field.name, multiple=many, type=kind, default=field.default, show_default=not many,
                             help=field.metadata.get("help") or helps.get(field.name))(f)
        return f
    return decorate


def field_docs(cls) -> dict[str, str]:
    """A dataclass's attribute docstrings (the string under each field), one line each."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    out = {}
    for field, doc in zip(body, body[1:]):
        if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
            out[field.target.id] = " ".join(str(doc.value.value).split())
    return out
