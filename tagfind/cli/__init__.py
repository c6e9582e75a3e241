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

import gc
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
from .query import query_cmd

__all__ = ["EXIT_ERROR", "EXIT_FOUND", "EXIT_INTERRUPTED", "EXIT_NOTHING", "Fatal", "cli", "main"]


# Subcommand name -> (module, attribute): imported only when named, so that a query does not
# pay for the subcommands' modules (trend, watch, export and what they import).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "snapshot": ("tagfind.cli.snapshot", "snapshot_cmd"),
    "trend": ("tagfind.cli.trend", "trend_cmd"),
    "watch": ("tagfind.cli.watch", "watch_cmd"),
    "export": ("tagfind.cli.export", "export_cmd"),
    "index": ("tagfind.cli.index_cmd", "index_group"),
}


class DefaultGroup(click.Group):
    """`tagfind TAG...` runs the query; `tagfind snapshot ...` runs a subcommand. Tags have at
    most 4 characters, so they never collide with a subcommand name. The subcommands of
    LAZY_COMMANDS are imported when named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            from importlib import import_module

            module, attribute = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        named = args and (args[0] in self.commands or args[0] in LAZY_COMMANDS)
        if not named and (not args or args[0] != "--version"):
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: like click's standalone mode, but every error is one line, Ctrl-C
    exits 130, and a failure to write the output (a full disk, a closed pipe) is said in
    words."""
    try:
        code = _main(argv)
    finally:
        # The interpreter's exit collects cycles over every object the imports made (about a
        # twentieth of a warm query); nothing waits for that collection, so it is skipped
        # (objects are still freed as the modules are torn down).
        gc.freeze()
    _ignore_ctrl_c()
    sys.exit(code)


def _ignore_ctrl_c() -> None:
    """The command is done and its output written: a Ctrl-C from now on would only interrupt
    the interpreter's teardown, which prints a traceback ("Exception ignored in ...") and
    still exits 0."""
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # not the main thread: Python does not deliver it there
        pass


def _main(argv: Sequence[str] | None) -> int:
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
    return code if isinstance(code, int) else 0


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what could not be
    written does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
