"""Exit codes and the one-line error every command raises (shown as `tagfind: error: ...`)."""

from __future__ import annotations

from typing import Any

import click

EXIT_FOUND, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2


class Fatal(click.ClickException):
    """A one-line error with exit code 2."""

    exit_code = EXIT_ERROR

    def show(self, file: Any = None) -> None:
        click.echo(f"tagfind: error: {self.format_message()}", err=True)
