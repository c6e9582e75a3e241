"""The command line: the `tagfind` group, its entry point and its commands, one module each.

`tagfind TAG...` runs the query command (the group's default); `tagfind snapshot ...` runs a
subcommand. Exit codes: 0 something found, 1 nothing found, 2 usage or environment error.
Every error is one line on stderr; no traceback reaches the user.

- options.py: the source/index options every command shares (SourceOptions) and opening the
  refreshed index from them.
- query.py: tag and driver queries, --top, --rebuild-index.
- snapshot.py: `tagfind snapshot` (one, many --from, periodic --every/--count).
- watch.py: `tagfind watch`; trend.py: `tagfind trend`.
- export.py: `tagfind export --pooltag FILE`.
- index_cmd.py: `tagfind index export FILE`, `tagfind index import FILE`.
- render.py: what the commands print besides the tables (stats line, messages).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from .. import __version__
from .errors import (
    EXIT_ERROR,
    EXIT_FOUND,
    EXIT_INTERRUPTED,
    EXIT_NOTHING,
    Fatal,
    Interrupted,
    os_error_text,
)
from .export import export_cmd
from .index_cmd import index_group
from .query import query_cmd
from .snapshot import snapshot_cmd
from .trend import trend_cmd
from .watch import watch_cmd

__all__ = ["EXIT_ERROR", "EXIT_FOUND", "EXIT_INTERRUPTED", "EXIT_NOTHING", "Fatal", "cli", "main"]


class DefaultGroup(click.Group):
    """`tagfind TAG...` runs the query; `tagfind snapshot ...` runs a subcommand. Tags have at
    most 4 characters, so they never collide with a subcommand name."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] != "--version"):
            args = ["query", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        query = self.commands["query"]
        with click.Context(query, info_name=ctx.info_name, parent=None) as sub:
            query.format_help(sub, formatter)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tagfind")
def cli() -> None:
    """tagfind: which driver allocates kernel pool with this tag?"""


cli.add_command(query_cmd)
cli.add_command(snapshot_cmd)
cli.add_command(trend_cmd)
cli.add_command(watch_cmd)
cli.add_command(export_cmd)
cli.add_command(index_group)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: like click's standalone mode, but every error is one line, Ctrl-C
    exits 130, and a failure to write the output (a full disk, a closed pipe) is said in
    words."""
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="tagfind",
                        standalone_mode=False)
        sys.stdout.flush()
    except click.UsageError as exc:
        click.echo(f"tagfind: error: {exc.format_message()} (see tagfind --help)", err=True)
        code = EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        Interrupted().show()
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # `tagfind ... | head`: the reader has all it wanted
        _drop_stdout()
        code = EXIT_ERROR
    except OSError as exc:
        _drop_stdout()
        click.echo(f"tagfind: error: cannot write the output: {os_error_text(exc)}", err=True)
        code = EXIT_ERROR
    sys.exit(code if isinstance(code, int) else 0)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what could not be
    written does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
