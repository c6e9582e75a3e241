"""What the commands print besides the result tables: the refresh statistics line and the
per-file failures."""

from __future__ import annotations

from typing import Any

import click


def stats_line(stats: Any) -> str:
    failed = len(stats.failed)
    return (f"index: {stats.total} files, {stats.scanned} scanned, {stats.reused} reused, "
            f"{stats.unchanged} unchanged, {stats.removed} removed, {failed} failed "
            f"({stats.seconds:.2f} s)")


def echo_refresh_stats(stats: Any, verbose: int) -> None:
    if stats.failed:
        click.echo(f"tagfind: {len(stats.failed)} file(s) could not be scanned"
                   + ("" if verbose else " (-v names them)"), err=True)
        if verbose:
            for path, error in stats.failed:
                click.echo(f"tagfind:   {path}: {error}", err=True)
    if verbose:
        click.echo(f"tagfind: {stats_line(stats)}", err=True)
