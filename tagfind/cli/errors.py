"""Exit codes, the one-line error every command raises (shown as `tagfind: error: ...`), and
the guard that turns anything else into such a line: no traceback and no Python class name
reaches the user."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

import click

EXIT_FOUND, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class Fatal(click.ClickException):
    """A one-line error with exit code 2."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"tagfind: error: {self.format_message()}", err=True)


class Interrupted(Fatal):
    """Ctrl-C: exit code 130, the progress line cleared first."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")

    def show(self, file: Any = None) -> None:
        clear_progress_line()
        super().show(file)


def clear_progress_line() -> None:
    """On a terminal, erase the line the progress bar (and the terminal's `^C` echo) left,
    so the error starts on a clean line."""
    try:
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def os_error_text(exc: OSError) -> str:
    """An OSError in words: its strerror, without the class name or errno number."""
    if exc.strerror:
        return exc.strerror
    if exc.errno in errno.errorcode:
        import os

        return os.strerror(exc.errno)
    return str(exc) or "input/output error"


def guarded(func: Callable[..., int], *args: Any) -> int:
    """Run a command's body: Ctrl-C becomes Interrupted, any other failure one line."""
    try:
        return func(*args)
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        raise Interrupted() from None
    except OSError as exc:
        if exc.filename:
            raise Fatal(f"cannot use {exc.filename}: {os_error_text(exc)}") from None
        # Without a file name: writing the output (a full disk, a closed pipe).
        raise Fatal(f"cannot write the output: {os_error_text(exc)}") from None
    except Exception as exc:  # the user gets one line, never a traceback
        raise Fatal(f"internal error ({exc}); please report it with the command line") from None
