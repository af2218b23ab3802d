"""The `atlas` group: --atlas and --debug, and every failure as one line on stderr."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import click


class AtlasGroup(click.Group):
    """Every failure is one line on stderr (`error: ...`): exit 2 for bad input or a busy atlas, 1 for the
    rest. `atlas --debug ...` (or ATLAS_DEBUG=1) shows the traceback instead."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001  (one line for whatever went wrong; --debug for the rest)
            if ctx.params.get("debug") or os.environ.get("ATLAS_DEBUG"):
                raise
            message, code = explain(e)
            click.secho(f"error: {message}", fg="red", err=True)
            sys.exit(code)


def explain(e: BaseException) -> tuple[str, int]:
    """(one line, exit code) for a failure of a command."""
    from atlas.errors import QueryError
    from atlas.sae import SAEError
    from atlas.store import AtlasBusy

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
        where = getattr(e, "filename", None) or "the atlas folder"
        return (f"disk full writing {where}: free some space (or point --atlas elsewhere) and rerun; "
                f"nothing was published and the job's working files were removed"), 2
    if isinstance(e, (SAEError, AtlasBusy, KeyError, FileNotFoundError, ValueError, QueryError)):
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        return " ".join(str(text).split()), 2
    first = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {first} (run `atlas --debug ...` for the traceback)", 1


def checkout_commit(package_dir: Path) -> str | None:
    """The commit of the git checkout the code runs from ('<sha>', '<sha> with uncommitted changes'), or None
    for an installed wheel: the package folder must sit at the top of the work tree (a venv inside a checkout
    does not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package_dir.resolve().parent:
            return None
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, an unborn branch
        return None
    return f"{sha} with uncommitted changes" if dirty else sha


def version_lines() -> list[str]:
    """What `atlas --version` prints: the package, the checkout's commit, the atlas schema versions handled."""
    import atlas
    from atlas.store.schema import MIGRATIONS, SCHEMA_VERSION

    lines = [f"feature-atlas {atlas.__version__}"]
    if commit := checkout_commit(Path(atlas.__file__).parent):
        lines.append(f"commit {commit}")
    oldest = min(MIGRATIONS) - 1
    lines.append(f"atlas schema: writes and serves version {SCHEMA_VERSION}; upgrades versions "
                 f"{oldest}-{SCHEMA_VERSION - 1} in place (`atlas migrate`, or any job)")
    return lines


def print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo("\n".join(version_lines()))
        ctx.exit()


@click.group(cls=AtlasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="Show the version, the commit of a checkout and the atlas schema versions, and exit.")
@click.option("--atlas", "atlas_path", type=click.Path(path_type=Path), default=None,
              help="Atlas DuckDB file [default: $ATLAS_PATH or ./atlas.duckdb].")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure instead of one line.")
@click.pass_context
def main(ctx, atlas_path, debug):
    """Feature Atlas: how SAE features survive, change, split, die and are born across layers and seeds."""
    from atlas.store import Atlas, default_path

    ctx.obj = Atlas(atlas_path or default_path())  # what every command's @click.pass_obj receives
